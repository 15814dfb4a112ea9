"""Recipes: YAML -> validated, typed config (pydantic).  No math lives here."""
from .schema import Recipe
from .loader import RecipeError, apply_overrides, load_recipe, shipped_recipes

__all__ = ["Recipe", "RecipeError", "apply_overrides", "load_recipe", "shipped_recipes"]
