"""Map builders for MettaGrid. ``MapBuilderConfig`` is the tagged union used in env configs."""

from typing import Annotated, Union

from pydantic import Field

from metta.mettagrid.map.ascii import AsciiMap
from metta.mettagrid.map.base import MapBuilder
from metta.mettagrid.map.level import Level, cell_code, cell_name
from metta.mettagrid.map.random_map import RandomMap

MapBuilderConfig = Annotated[Union[RandomMap, AsciiMap], Field(discriminator="type")]

__all__ = ["AsciiMap", "Level", "MapBuilder", "MapBuilderConfig", "RandomMap", "cell_code", "cell_name"]
