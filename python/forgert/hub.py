"""Models from the Hugging Face Hub, through huggingface_hub (its cache, progress bars and
offline mode: HF_HOME / HF_HUB_CACHE, HF_HUB_OFFLINE=1, HF_TOKEN for gated repositories).

A repository with one GGUF model gives that model; with several, the caller names one; with
none, an HF checkpoint (config.json, tokenizer files, *.safetensors) is downloaded as a directory.
A model split in shards (NAME-00001-of-00003.gguf, ...: gguf_split.py) counts as one: naming any
shard, or the repository alone when the split is its only model, downloads every shard.
"""
from __future__ import annotations

import os

from .gguf_split import shard_names, split_name_parts

HF_PREFIX = "hf:"
# What forgert reads from an HF checkpoint directory (safetensors_dir.py): configs, tokenizer,
# weights, and chat templates that some repos keep in their own file.
CHECKPOINT_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "tokenizer.model"]


class HubError(Exception):
    """A model could not be had from the Hub: not found, not cached while offline, ambiguous."""


def _hub():
    try:
        import huggingface_hub
    except ImportError:
        raise HubError("models from the Hugging Face Hub need the huggingface_hub package: "
                       "pip install huggingface_hub") from None
    return huggingface_hub


def parse_hf_uri(text: str):
    """'hf:ORG/NAME' -> ('ORG/NAME', None); 'hf:ORG/NAME/dir/file.gguf' -> ('ORG/NAME', 'dir/file.gguf')."""
    parts = text[len(HF_PREFIX):].strip("/").split("/")
    if len(parts) < 2 or not all(parts):
        raise HubError(f"{text!r}: expected hf:ORG/NAME or hf:ORG/NAME/FILE.gguf")
    return "/".join(parts[:2]), ("/".join(parts[2:]) or None)


def _repo_files(hub, repo_id: str, revision) -> list:
    """The repository's files: listed by the Hub, or, when it cannot be asked (HF_HUB_OFFLINE=1,
    no network), those of the cached snapshot."""
    try:
        return hub.list_repo_files(repo_id, revision=revision)
    except Exception as online_error:    # re-raised below unless the cache has the repository
        try:
            folder = hub.snapshot_download(repo_id, revision=revision, local_files_only=True)
        except Exception:
            raise online_error from None
    return sorted(os.path.relpath(os.path.join(d, f), folder).replace(os.sep, "/")
                  for d, _, files in os.walk(folder) for f in files)


# The packages whose exceptions mean "the Hub could not be asked": huggingface_hub and the HTTP
# clients its versions use (httpx2 since 1.x; a ConnectError without network is one of its own,
# not an OSError).
_HUB_ERROR_PACKAGES = frozenset({"huggingface_hub", "httpx", "httpx2", "httpcore", "requests", "urllib3"})


def _is_hub_error(e: Exception) -> bool:
    """huggingface_hub's errors (OSError and ValueError kinds) and its HTTP clients' ones: the
    exception's class or one of its bases defined in one of those packages."""
    return isinstance(e, (OSError, ValueError)) or any(
        cls.__module__.split(".")[0] in _HUB_ERROR_PACKAGES for cls in type(e).__mro__)


def _gguf_models(ggufs: list) -> list:
    """The repository's GGUF models, each the list of its files (a split's shards in order)."""
    models, splits = [], {}
    for f in ggufs:
        parts = split_name_parts(f)
        if parts is None:
            models.append([f])
        elif (parts[0], parts[2]) not in splits:
            splits[parts[0], parts[2]] = shards = shard_names(parts[0], parts[2])
            models.append(shards)
    return models


def _download_model(hub, repo_id: str, files: list, revision) -> str:
    """Every file of one GGUF model (a split's shards land side by side); the first one's path."""
    return [hub.hf_hub_download(repo_id, f, revision=revision) for f in files][0]


def download(repo_id: str, filename: str | None = None, revision: str | None = None) -> str:
    """A local path for the model in `repo_id` (downloaded, or from the cache): the .gguf file
    `filename` (with the other shards of its split, if it is one), the repository's only GGUF
    model, or its HF checkpoint directory."""
    hub = _hub()
    where = f"hf:{repo_id}" + (f"/{filename}" if filename else "")
    try:
        if filename is not None:
            if split_name_parts(filename) is not None:   # a shard: the whole split
                return _download_model(hub, repo_id, _gguf_models([filename])[0], revision)
            return hub.hf_hub_download(repo_id, filename, revision=revision)
        files = _repo_files(hub, repo_id, revision)
        models = _gguf_models([f for f in files if f.endswith(".gguf")])
        if len(models) == 1:
            return _download_model(hub, repo_id, models[0], revision)
        if len(models) > 1:
            listing = "\n  ".join(m[0] + (f" (and the other {len(m) - 1} shards of its split)" if len(m) > 1 else "")
                                  for m in models)
            raise HubError(f"{repo_id} has {len(models)} GGUF models; name one (hf:{repo_id}/FILE, or "
                           f"Model.from_pretrained({repo_id!r}, filename=...)). forgert reads F32, F16, "
                           f"BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS and the IQ1-IQ3 "
                           f"types (so Q4_K_M, Q5_K_M, IQ4_XS, IQ3_M, IQ2_M; IQ1-IQ3 on the CPU backend) "
                           f"weights:\n  {listing}")
        if "config.json" in files and any(f.endswith(".safetensors") for f in files):
            return hub.snapshot_download(repo_id, revision=revision, allow_patterns=CHECKPOINT_PATTERNS)
        raise HubError(f"{repo_id} has no .gguf file and no config.json + *.safetensors checkpoint")
    except HubError:
        raise
    except Exception as e:
        if not _is_hub_error(e):
            raise
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        hint = (" (HF_HUB_OFFLINE is set: only the local Hugging Face cache is used)" if offline else "")
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HubError(f"cannot get {where} from the Hugging Face Hub{hint}: {first_line}") from None


def resolve(path) -> str:
    """A model path as given by a user: 'hf:...' is fetched from the Hub, anything else is a path."""
    text = os.fspath(path)
    if isinstance(text, str) and text.startswith(HF_PREFIX):
        return download(*parse_hf_uri(text))
    return text
