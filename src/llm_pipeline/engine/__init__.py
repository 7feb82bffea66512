"""Where the heavy work of a stage runs (`execution.engine`).

`local` (the default): in the stage's own process, as it always has. `ray`: the load-and-deduplicate stage hands
its work to a Ray cluster as tasks over shards (ray_dedup.py); ray_session.py connects to the cluster named by
`execution.ray_address` (or starts one on this machine for the run) and turns a cluster that cannot be reached,
or that fails under a stage, into an error that names the address and that the stage retry policy retries.

The library's shard-level functions (`ingest.load.load_file`, `dedup.minhash.band_rows` and friends) know nothing
of Ray; this package is the thin layer that fans them out. Nothing here imports Prefect.
"""

ENGINES = ("local", "ray")
