"""Checkpoint files on disk: which files of a model folder hold its weights, and which
ones Upstream refuses (pickles, other frameworks' formats). Shared by the registry (import),
adapters (their base's shapes) and merging."""

from __future__ import annotations

import json
import re
from pathlib import Path

from upstream.errors import InvalidInput

# Loading these runs arbitrary code (pickle); Upstream never does.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
FOREIGN_WEIGHTS = {"tf_model.h5": "TensorFlow", "flax_model.msgpack": "Flax"}
FOREIGN_FLAGS = {"tf_model.h5": "from_tf", "flax_model.msgpack": "from_flax"}
SHARD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.safetensors$")


def weight_files(path: Path) -> list[Path]:
    """The safetensors files transformers would load: those the index names, or model*.

    An index names its shards by bare file name in the model's folder: a name with a
    directory part (`../x.safetensors`, `/etc/…`) is refused, never followed."""
    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text("utf-8"))["weight_map"]
            names = set(weight_map.values())
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise InvalidInput(f"{index}: not a valid safetensors index: {e}") from e
        bad = sorted(str(n) for n in names if not isinstance(n, str) or not SHARD_NAME.match(n))
        if bad:
            raise InvalidInput(
                f"{index}: shard name {bad[0]!r} is not a file name in the model's folder "
                "(letters, digits, . _ -, ending in .safetensors)"
            )
        missing = sorted(n for n in names if not (path / n).is_file())
        if missing:
            raise InvalidInput(f"{index}: names missing shard(s) {', '.join(missing)}")
        return sorted(path / n for n in names)
    # Other *.safetensors (e.g. consolidated.safetensors in Mistral repos) are duplicates.
    return sorted(path.glob("model*.safetensors"))
