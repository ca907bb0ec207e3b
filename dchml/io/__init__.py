"""Files dchml writes: the one atomic writer (`atomic`), a run's output folder with its lock
(`run_dir`), and the integrity check of the files it reads back (`integrity`). The bottom layer:
it imports nothing else of dchml."""
