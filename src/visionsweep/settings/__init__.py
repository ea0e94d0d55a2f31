"""The hyperparameter schema and its resolution from files, ``--set`` options and Python values."""
from visionsweep.settings.resolve import (
    ALIASES,
    all_setting_names,
    canonical_key,
    load_settings_file,
    merge_settings,
    override_settings,
    parse_set_options,
    resolve_settings,
)
from visionsweep.settings.schema import Settings, applies, parse_tile_grid_size, scope_of

__all__ = [
    "ALIASES", "Settings", "all_setting_names", "applies", "canonical_key", "load_settings_file", "merge_settings",
    "override_settings", "parse_set_options", "parse_tile_grid_size", "resolve_settings", "scope_of",
]
