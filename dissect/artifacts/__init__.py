"""The on-disk artifacts: the single owner of every file format dissect reads and writes.

Split by what varies (docs/artifacts.md documents every file):

* :mod:`.formats`  the kinds, their version and the command that makes each
* :mod:`.files`    writing safely: output checks, atomic writes, locks, provenance
* :mod:`.hdf5`     images.h5, text.h5, activations.h5
* :mod:`.tables`   the Parquet kinds with every schema (labels, composed, explanations, simulate, sanity, ...)
* :mod:`.tensors`  directions.safetensors
* :mod:`.external` files other tools write: other methods' label CSVs, per-image annotations
* :mod:`.runs`     run folders: which file plays which part (run.json)

Readers check everything they rely on and name what is wrong in one line: other programs
may write these files and have dissect read them.
"""

from .external import EXTERNAL_LABEL_KINDS, Annotations, LabelFile, read_annotations, read_label_file
from .files import (ProcessLock, atomic_path, check_output_path, check_room, end_command, forget_inputs, grows,
                    note_inputs, note_probe_folder, provenance, refuse_clobber, write_json)
from .formats import (ABLATE_FORMAT, ACTIVATIONS_FORMAT, COMPARE_FORMAT, COMPOSED_FORMAT, DIRECTIONS_FORMAT, EVALUATION_FORMAT, EXPLAIN_FORMAT,
                      FORMAT_VERSION, HDF5_FORMATS, IMAGE_FORMAT, LABELS_FORMAT, MAKER, PARQUET_FORMATS, PREDICT_FORMAT,
                      PVALUES_FORMAT, SANITY_FORMAT, SEGMENT_FORMAT, SIMULATE_FORMAT, STABILITY_FORMAT, STDOUT, TEXT_FORMAT)
from .hdf5 import (COPY_BLOCK_BYTES, EMBEDDING_DTYPES, LAYER_CHUNK, WIDE_LAYER_BYTES, Activations, DatasetHeader,
                   Embeddings, Header, RowSpill, RowSpillView, activation_layer_shape, check_same_clip, h5_dataset,
                   h5_layers, peek_attrs, read_activation_layer, read_activation_rows, read_activations, read_embeddings, read_header,
                   read_image_embeddings, read_sizes, read_text_embeddings, write_activations, write_embeddings)
from .stored_maps import UnitMaps, maps_in, read_maps
from .runs import RUN_FILES, RUN_MANIFEST, find_run, write_run_manifest
from .sniff import sniff
from .tables import (COMPOSED_COLUMNS, KINDS, column_names, LABEL_COLUMNS, composed_schema, labels_schema, parquet_rows, read_labels_metadata,
                     read_parquet_metadata, read_table, summary_path_of, table_of, write_labels, write_parquet,
                     write_table)
from .tensors import read_directions_header, read_directions_metadata, write_directions
