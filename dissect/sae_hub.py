"""SAEs on the Hugging Face hub: ``hf:ORG/REPO[/PATH][@REVISION]``, downloaded into the hub's cache (only what is
named) and then read like a local folder or file (``sae_files``)."""

from __future__ import annotations

from pathlib import Path

from .errors import UsageError
from .sae_files import SAELENS_CONFIG

HUB_PREFIX = "hf:"


def from_hub(spec: str) -> Path:
    """The local copy of ``hf:ORG/REPO[/PATH][@REVISION]``: an SAE on the Hugging Face hub (a repository's top-level
    SAE file, or the folder or file PATH inside it), downloaded into the hub's cache (or found there when offline).
    Only what is named is downloaded (and, beside a file, its config)."""
    from .errors import DissectError, ModelError, first_line
    from .runtime import hub_offline

    body, at, revision = spec[len(HUB_PREFIX):].rpartition("@")
    if not at or "/" in revision or not revision:              # no revision (an '@' inside a folder's name)
        body, revision = spec[len(HUB_PREFIX):], ""
    parts = [x for x in body.strip("/").split("/") if x]
    if len(parts) < 2:
        raise UsageError(f"--directions {spec}: not hf:ORG/REPO[/PATH][@REVISION]",
                         hint="e.g. --directions blocks.9=hf:ORG/REPO/blocks.9 (a folder of the repository)")
    repo, sub = "/".join(parts[:2]), "/".join(parts[2:])
    offline = hub_offline()
    hint = (f"where there is internet run `hf download {repo}{' --revision ' + revision if revision else ''}"
            f"{' --include ' + repr(sub + '/*') if sub else ''} --local-dir DIR` and pass "
            f"--directions LAYER=DIR{'/' + sub if sub else ''}")
    try:
        from huggingface_hub import snapshot_download

        if sub:               # the folder or file, and the config files beside a file (dictionary_learning, ViT-Prisma)
            parent = sub.rpartition("/")[0]
            patterns = [sub, f"{sub}/*"] + [f"{parent}/{c}" if parent else c for c in ("config.json", SAELENS_CONFIG)]
        else:                 # the repository's top-level files only (a release of many SAEs is not all fetched)
            patterns = None if offline else _top_level_files(repo, revision)
        local = Path(snapshot_download(repo, revision=revision or None, allow_patterns=patterns))
    except DissectError:
        raise
    except Exception as e:
        raise ModelError(f"cannot download the SAE {spec}: {first_line(e, 'not found', 160)}", hint=hint) from None
    target = local / sub if sub else local
    if not target.exists():
        if offline:
            raise ModelError(f"{spec}: {sub} is not in the local cache of the hub (offline)", hint=hint)
        raise UsageError(f"{spec}: the repository has no {sub}", hint="name a folder or file the repository holds")
    return target


def _top_level_files(repo: str, revision: str) -> list[str]:
    from huggingface_hub import HfApi

    files = [f for f in HfApi().list_repo_files(repo, revision=revision or None) if "/" not in f]
    if not files:
        raise UsageError(f"hf:{repo} holds no file at its top level",
                         hint="name the SAE's folder or file inside it: hf:ORG/REPO/PATH")
    return files
