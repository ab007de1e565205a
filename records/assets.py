"""The user's assets, one import for the stages: every loader validates everything, reports every problem
at once (InputError lines `<file>: <where>: <what>`) and writes nothing. Each job has its own module:

- records/scenarios.py: scenario sets (JSON, JSONL, `hf:` datasets) and the selection a stage runs on
- records/hub.py: Hugging Face datasets, offline only
- records/arrays.py: .npy arrays (caches, selectivity, directions)
- records/clusters.py: the clustering's JSON files
- records/guards.py: outputs never land in or over the inputs
- records/jsonfile.py: strict JSON reading
"""

from records.arrays import load_array, npy_header
from records.clusters import load_cluster_assignments, load_cluster_attributes, load_cluster_summaries
from records.guards import check_output_dir, check_output_file
from records.scenarios import load_scenarios, select_scenarios

__all__ = [
    "check_output_dir",
    "check_output_file",
    "load_array",
    "load_cluster_assignments",
    "load_cluster_attributes",
    "load_cluster_summaries",
    "load_scenarios",
    "npy_header",
    "select_scenarios",
]
