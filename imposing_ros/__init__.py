"""imposing_ros: real-time visual localization with implicit pose encoding (ImPosing)."""

__version__ = '0.1.0'
