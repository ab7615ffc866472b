-- Device ids are unique per organization, so one tenant's "TRK-7" neither blocks nor reveals
-- another's. On the broker (MQTT username and topic level) a device goes by its MQTT name: its
-- id in the default organization (id 1), `{organization slug}~{id}` in any other; `~` is not in
-- the id alphabet, so the two forms never meet. Devices registered before this migration keep
-- their id as their MQTT name: their loggers already log in and publish under it.
ALTER TABLE devices ADD COLUMN mqtt_name text;
UPDATE devices SET mqtt_name = id;
ALTER TABLE devices
    ALTER COLUMN mqtt_name SET NOT NULL,
    ADD CONSTRAINT devices_mqtt_name_key UNIQUE (mqtt_name),
    ADD CONSTRAINT devices_org_id_id_key UNIQUE (org_id, id),
    DROP CONSTRAINT devices_id_key;

CREATE FUNCTION devices_mqtt_name() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        NEW.mqtt_name := CASE WHEN NEW.org_id = 1 THEN NEW.id
            ELSE (SELECT slug FROM organizations WHERE id = NEW.org_id) || '~' || NEW.id END;
    ELSIF NEW.mqtt_name IS DISTINCT FROM OLD.mqtt_name OR NEW.id IS DISTINCT FROM OLD.id
            OR NEW.org_id IS DISTINCT FROM OLD.org_id THEN
        RAISE EXCEPTION 'a device keeps its id, organization and MQTT name'
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER devices_mqtt_name BEFORE INSERT OR UPDATE OF id, org_id, mqtt_name ON devices
    FOR EACH ROW EXECUTE FUNCTION devices_mqtt_name();
