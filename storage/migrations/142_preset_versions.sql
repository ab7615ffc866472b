-- Built-in alarm profiles (presets) frozen as released versions: their bodies are written here
-- when the schema is migrated and never change afterwards, so an edit of a preset in the code
-- cannot silently change what "2-8C v1" means for excursions already judged under it. A changed
-- preset must carry a new version; it is then released beside the old one.
CREATE TABLE preset_versions (
    id           text NOT NULL,
    version      integer NOT NULL CHECK (version > 0),
    body         jsonb NOT NULL,
    body_sha256  text NOT NULL CHECK (body_sha256 ~ '^[0-9a-f]{64}$'),
    released_at  timestamptz NOT NULL DEFAULT now(),
    released_by  text NOT NULL DEFAULT 'coldchain release',
    PRIMARY KEY (id, version)
);
