"""Task collections and FLAN's clusters, read from `tasks/clusters.yaml` (no TensorFlow).

A collection is a folder of task cards under `tasks/` (`tasks/flan2021/*.yaml`
is the `flan2021` collection). Clusters group datasets by task type as FLAN
2021 does: 17 code keys (`Cluster`), each in one of the paper's 12 clusters
(`PaperCluster`), each listing its FLAN task names and the keys that holding
it out also removes (`also_removes`, FLAN's overlap rules). `code_keys(name)`
accepts a paper cluster or a code key; `heldout_keys(name)` applies the
overlap rules. `flanx.data.flan2021` builds the mixtures from these.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
from pathlib import Path

import yaml

from flanx import paths

CLUSTERS_FILE = "clusters.yaml"
FLAN2021 = "flan2021"


class ClusterError(KeyError):
    """An unknown cluster name, or a malformed clusters.yaml."""

    def __str__(self) -> str:  # KeyError quotes its message; this one reads as a sentence
        return str(self.args[0])


@dataclasses.dataclass(frozen=True)
class Cluster:
    key: str                      # FLAN's code cluster key, e.g. entailment
    paper_cluster: str            # the paper's cluster, e.g. nli
    description: str
    tasks: tuple[str, ...]        # FLAN 2021 task names (card names) in this cluster
    also_removes: tuple[str, ...] = ()  # keys removed from training when this one is held out
    index: int = 0                # position in FLAN's order (the split number of its mixtures)


@dataclasses.dataclass(frozen=True)
class PaperCluster:
    key: str
    name: str
    description: str
    code_keys: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ClusterTable:
    clusters: dict[str, Cluster]
    paper_clusters: dict[str, PaperCluster]
    path: str

    def names(self) -> list[str]:
        """Every accepted name: paper clusters, then code keys not spelled like a paper cluster."""
        return list(self.paper_clusters) + [k for k in self.clusters if k not in self.paper_clusters]


def _fail(path, key: str, msg: str) -> ClusterError:
    return ClusterError(f"{path}: {key}: {msg}")


def _parse(raw: dict, path: str) -> ClusterTable:
    if not isinstance(raw, dict) or not isinstance(raw.get("clusters"), dict) \
            or not isinstance(raw.get("paper_clusters"), dict):
        raise _fail(path, "clusters", "expected mappings `paper_clusters:` and `clusters:`")
    papers = raw["paper_clusters"]
    clusters, seen = {}, {}
    for i, (key, c) in enumerate(raw["clusters"].items()):
        if not isinstance(c, dict) or c.get("paper_cluster") not in papers:
            raise _fail(path, f"clusters.{key}.paper_cluster",
                        f"expected one of {', '.join(papers)}, got {(c or {}).get('paper_cluster')!r}")
        for task in c.get("tasks") or ():
            if task in seen:
                raise _fail(path, f"clusters.{key}.tasks", f"{task!r} is already in cluster {seen[task]!r}")
            seen[task] = key
        clusters[key] = Cluster(key, c["paper_cluster"], str(c.get("description", "")),
                                tuple(c.get("tasks") or ()), tuple(c.get("also_removes") or ()), i)
    for c in clusters.values():
        unknown = [k for k in c.also_removes if k not in clusters]
        if unknown:
            raise _fail(path, f"clusters.{c.key}.also_removes", f"unknown key(s) {', '.join(unknown)}")
    paper = {}
    for key, p in papers.items():
        keys = tuple(k for k, c in clusters.items() if c.paper_cluster == key)
        if not keys:
            raise _fail(path, f"paper_clusters.{key}", "no code cluster key names this paper cluster")
        p = p or {}
        paper[key] = PaperCluster(key, str(p.get("name", key)), str(p.get("description", "")), keys)
    return ClusterTable(clusters, paper, path)


@functools.lru_cache(maxsize=4)
def _load(path: str, mtime: float) -> ClusterTable:
    del mtime  # part of the cache key: an edited file is read again
    return _parse(yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}, path)


def cluster_table(path: str | Path | None = None) -> ClusterTable:
    """The clusters of `tasks/clusters.yaml` (or `path`)."""
    path = Path(path) if path else paths.tasks_dir() / CLUSTERS_FILE
    return _load(str(path), path.stat().st_mtime)


def unknown_cluster(name: str, table: ClusterTable | None = None) -> ClusterError:
    table = table or cluster_table()
    close = difflib.get_close_matches(str(name), table.names(), n=3, cutoff=0.5)
    hint = f"; did you mean: {', '.join(close)}?" if close else ""
    return ClusterError(f"unknown cluster {name!r}{hint} Paper clusters: {', '.join(table.paper_clusters)}; "
                        f"code keys: {', '.join(table.clusters)} (tasks/{CLUSTERS_FILE})")


def code_keys(name: str) -> tuple[str, ...]:
    """The code keys a cluster name stands for: a paper cluster's keys, or the key itself."""
    table = cluster_table()
    if name in table.paper_clusters:
        return table.paper_clusters[name].code_keys
    if name in table.clusters:
        return (name,)
    raise unknown_cluster(name, table)


def heldout_keys(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(held-out code keys, further keys removed from training by FLAN's overlap rules) for a cluster name."""
    table = cluster_table()
    held = code_keys(name)
    removed = []
    for key in held:
        removed += [k for k in table.clusters[key].also_removes if k not in held and k not in removed]
    return held, tuple(removed)


def collection_tasks(collection: str = FLAN2021) -> list[str]:
    """The task names clusters.yaml lists (FLAN 2021's 69), in FLAN's cluster order."""
    if collection != FLAN2021:
        raise KeyError(f"clusters.yaml lists the tasks of collection {FLAN2021!r} only, not {collection!r}")
    return [t for c in cluster_table().clusters.values() for t in c.tasks]
