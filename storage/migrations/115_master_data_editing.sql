-- Master data that people edit: every editable record carries a row version, bumped by the
-- database on every change that alters it (whoever writes: the API, a bulk import, a script), so
-- an editor's `If-Match` names exactly the state it read and a stale one is refused (HTTP 412).
-- Shipments gain their state and actual times, and their legs; assignments their own version.
CREATE FUNCTION master_data_next_version() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := OLD.version + 1;
    NEW.updated_at := clock_timestamp();
    RETURN NEW;
END $$;

ALTER TABLE products ADD COLUMN version bigint NOT NULL DEFAULT 1;
ALTER TABLE sites ADD COLUMN version bigint NOT NULL DEFAULT 1;
ALTER TABLE lots ADD COLUMN version bigint NOT NULL DEFAULT 1;
ALTER TABLE shipments
    ADD COLUMN version bigint NOT NULL DEFAULT 1,
    ADD COLUMN state text NOT NULL DEFAULT 'planned'
        CHECK (state IN ('planned', 'in_transit', 'delivered', 'cancelled')),
    ADD COLUMN actual_departure timestamptz,
    ADD COLUMN actual_arrival timestamptz;
ALTER TABLE device_assignments
    ADD COLUMN version bigint NOT NULL DEFAULT 1,
    ADD COLUMN created_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN updated_at timestamptz;

CREATE TRIGGER products_version BEFORE UPDATE ON products FOR EACH ROW
    WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION master_data_next_version();
CREATE TRIGGER sites_version BEFORE UPDATE ON sites FOR EACH ROW
    WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION master_data_next_version();
CREATE TRIGGER lots_version BEFORE UPDATE ON lots FOR EACH ROW
    WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION master_data_next_version();
CREATE TRIGGER shipments_version BEFORE UPDATE ON shipments FOR EACH ROW
    WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION master_data_next_version();
CREATE TRIGGER device_assignments_version BEFORE UPDATE ON device_assignments FOR EACH ROW
    WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION master_data_next_version();

-- A shipment's legs, in order: each with its own route, carrier, mode, times and state. They are
-- part of the shipment (one version, one ETag): changing them changes the shipment.
CREATE TABLE shipment_legs (
    shipment_key      integer NOT NULL REFERENCES shipments ON DELETE CASCADE,
    seq               smallint NOT NULL CHECK (seq BETWEEN 1 AND 100),
    origin_gln        char(13) CHECK (origin_gln ~ '^[0-9]{13}$'),
    destination_gln   char(13) CHECK (destination_gln ~ '^[0-9]{13}$'),
    carrier           text,
    mode              text CHECK (mode IN ('road', 'air', 'sea', 'rail', 'courier', 'multimodal')),
    planned_departure timestamptz,
    planned_arrival   timestamptz,
    actual_departure  timestamptz,
    actual_arrival    timestamptz,
    state             text NOT NULL DEFAULT 'planned'
        CHECK (state IN ('planned', 'in_transit', 'delivered', 'cancelled')),
    PRIMARY KEY (shipment_key, seq)
);

-- Lists walk by key with filters: by state and by the time of the last change.
CREATE INDEX shipments_org_state ON shipments (org_id, state, id);
CREATE INDEX lots_org_expiry ON lots (org_id, expiry);

-- What a product's or a shipment's answer shows from other tables counts as a change of it too
-- (its default profile; its lots, legs and loggers), so its ETag changes with them. Statement
-- triggers: a bulk import of 100,000 assignments touches each shipment once, not once a row.
-- A record already changed in this transaction (updated_at at or after its start) is not touched
-- again: one edit is one version step, whatever it writes.
CREATE FUNCTION product_profiles_touch_product() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE products p SET updated_at = clock_timestamp()
      FROM (SELECT org_id, gtin FROM changed_rows) AS c
     WHERE p.org_id = c.org_id AND p.gtin = c.gtin AND p.updated_at < now();
    RETURN NULL;
END $$;
CREATE TRIGGER product_profiles_ins AFTER INSERT ON product_profiles
    REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION product_profiles_touch_product();
CREATE TRIGGER product_profiles_upd AFTER UPDATE ON product_profiles
    REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION product_profiles_touch_product();
CREATE TRIGGER product_profiles_del AFTER DELETE ON product_profiles
    REFERENCING OLD TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION product_profiles_touch_product();

CREATE FUNCTION shipment_parts_touch_shipment() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE shipments s SET updated_at = clock_timestamp()
     WHERE s.key IN (SELECT shipment_key FROM changed_rows) AND coalesce(s.updated_at, s.created_at) < now();
    RETURN NULL;
END $$;
CREATE TRIGGER shipment_lots_ins AFTER INSERT ON shipment_lots
    REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION shipment_parts_touch_shipment();
CREATE TRIGGER shipment_lots_upd AFTER UPDATE ON shipment_lots
    REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION shipment_parts_touch_shipment();
CREATE TRIGGER shipment_lots_del AFTER DELETE ON shipment_lots
    REFERENCING OLD TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION shipment_parts_touch_shipment();
CREATE TRIGGER shipment_legs_ins AFTER INSERT ON shipment_legs
    REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION shipment_parts_touch_shipment();
CREATE TRIGGER shipment_legs_upd AFTER UPDATE ON shipment_legs
    REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION shipment_parts_touch_shipment();
CREATE TRIGGER shipment_legs_del AFTER DELETE ON shipment_legs
    REFERENCING OLD TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION shipment_parts_touch_shipment();
CREATE TRIGGER device_assignments_ins AFTER INSERT ON device_assignments
    REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION shipment_parts_touch_shipment();
CREATE TRIGGER device_assignments_del AFTER DELETE ON device_assignments
    REFERENCING OLD TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION shipment_parts_touch_shipment();
-- A corrected assignment may move to another shipment: both the one it left and the one it joined.
CREATE FUNCTION device_assignments_touch_shipments() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE shipments s SET updated_at = clock_timestamp()
     WHERE s.key IN (SELECT shipment_key FROM new_rows UNION SELECT shipment_key FROM old_rows)
       AND coalesce(s.updated_at, s.created_at) < now();
    RETURN NULL;
END $$;
CREATE TRIGGER device_assignments_upd AFTER UPDATE ON device_assignments
    REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION device_assignments_touch_shipments();
