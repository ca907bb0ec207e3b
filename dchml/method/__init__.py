"""The method (docs/spec.md): the networks and their input normalisation (`models`, `normalize`,
`backbones`), the objective (`objective`), Algorithm 1 (`config`, `proxies`, `passes`, `train`:
one loop with model selection and exact resume), evaluation and encoding (`evaluate`,
`encoding`), checkpoints (`checkpoint`), the linear-hasher and chance baselines (`baselines`),
feature extraction with pretrained backbones (`features`), resource checks before a run
(`preflight`) and mixed precision (`precision`).
Imported by module (`from dchml.method.train import train`): nothing is loaded here."""
