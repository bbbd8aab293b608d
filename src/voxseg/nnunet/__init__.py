"""Run trained nnU-Net v2 models in voxseg: `import_nnunet` writes a run folder that predicts what nnU-Net predicts."""

from voxseg.nnunet.importer import ImportResult, import_nnunet

__all__ = ["ImportResult", "import_nnunet"]
