-- An edge agent whose outbox overflows folds each bucket of readings into one summary reading
-- (its mean) and keeps the bucket's extremes beside it. The readings table stores the mean with
-- flag 64; the extremes live here, so the rules judge a summary by its minimum and maximum and a
-- folded bucket cannot hide an excursion. Rare rows, keyed like the reading they belong to.
CREATE TABLE reading_extremes (
    device_key  integer NOT NULL REFERENCES devices,
    t           timestamptz NOT NULL,
    t_last      timestamptz NOT NULL,
    n           integer NOT NULL CHECK (n > 0),
    min_c       real NOT NULL,
    max_c       real NOT NULL CHECK (max_c >= min_c),
    PRIMARY KEY (device_key, t)
);
