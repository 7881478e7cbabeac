"""Framework-free core of mmsparse: imports torch only (no mmengine, mmdet or mmcv)."""
