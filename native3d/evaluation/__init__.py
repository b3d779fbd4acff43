"""Shape evaluation, behind `native3d evaluate` (`command`):

- `reconstruction`: an autoencoder checkpoint on a shard set (volume IoU, Chamfer-L1, F-score,
  normal consistency), per object and averaged;
- `generation`: a folder of generated meshes against a reference shard set (MMD, COV, 1-NNA,
  prompt accuracy); `evaluate_generation` is what `native3d sample`'s output folder feeds into;
- `report`: the metrics.json / metrics.md record.

Nothing is imported here, so the CLI can build its parser without loading torch.
"""
