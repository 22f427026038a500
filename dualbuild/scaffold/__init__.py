"""``dualbuild new``: template folders rendered with Jinja (render), their variables (variables)."""
