"""``robot-rl lake ingest``: robot logs (MCAP, ROS 1/2 bags, robomimic/ALOHA HDF5, LeRobot,
Minari) into validated, versioned lake commits. See ``docs/ingest.md``.

    from data_lake import Lake
    from data_lake.ingest import ingest, load_mapping
    report = ingest(["run1.mcap"], load_mapping("configs/ingest/mcap.yaml"), Lake.open("./lake"))

Modules: ``mapping`` (the YAML mapping file), ``streams`` (what readers produce), ``sync``
(resampling and splitting), ``images`` (decode and resize policy), ``ros`` (ROS messages),
readers ``mcap_reader``, ``rosbag``, ``hdf5`` (robomimic, ALOHA), ``lerobot``, ``minari``, and
``driver`` (units -> episodes -> one ``Lake.append``). Error codes: ``errors``.
"""

from data_lake.ingest.driver import READERS, IngestReport, detect_format, ingest, write_report
from data_lake.ingest.errors import CODES, IngestError, IngestRejected, MappingError, Note
from data_lake.ingest.mapping import FORMATS, Mapping, load_mapping

__all__ = [
    "CODES",
    "FORMATS",
    "READERS",
    "IngestError",
    "IngestRejected",
    "IngestReport",
    "Mapping",
    "MappingError",
    "Note",
    "detect_format",
    "ingest",
    "load_mapping",
    "write_report",
]
