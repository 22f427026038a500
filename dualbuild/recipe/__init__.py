"""The recipe: TOML in, a validated, frozen ``Recipe`` out, every mistake named by file, key and line.

Owns the recipe format (model), reading it (load, app, steps, reader, positions), the naming
rules of the formats it feeds (rules) and its JSON Schema (schema). Imports nothing of
dualbuild but ``errors``.
"""

from dualbuild.recipe.load import load_recipe, parse_recipe_bytes, parse_recipe_document

__all__ = ["load_recipe", "parse_recipe_bytes", "parse_recipe_document"]
