"""Recipe templates for `dualbuild new`; each folder is one template."""
