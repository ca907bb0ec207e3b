"""Files dchml writes: the one atomic writer (`atomic`) and a run's output folder with its lock
(`run_dir`). The bottom layer: it imports nothing else of dchml."""
