"""`python -m medart_core convert`: DICOM/NIfTI -> de-identified PNG slices in an imagefolder."""

from __future__ import annotations

import argparse

HELP = ("convert DICOM and NIfTI files into de-identified 8-bit PNG slices (imagefolder with metadata.jsonl "
        "and a de-identification report)")


def add_conversion_arguments(parser: argparse.ArgumentParser) -> None:
    """--window, --slices, --axis, --allow-burned-in, --patient-key: shared with the caption command."""
    from medart_core.medical_io import PERCENTILES, WINDOW_PRESETS, WINDOWS

    presets = ", ".join(f"{name} (level {level:g}, width {width:g} HU)" for name, (level, width) in WINDOW_PRESETS.items())
    parser.add_argument("--window", default="auto", choices=WINDOWS,
                        help=f"intensity window of DICOM/NIfTI input: CT presets {presets}; dicom (the file's own "
                             f"WindowCenter/Width); percentile ({PERCENTILES[0]}-{PERCENTILES[1]}); minmax "
                             "(default: auto = soft-tissue for CT, percentile otherwise)")
    parser.add_argument("--slices", default="middle",
                        help="slices of multi-frame DICOM and 3-D NIfTI: middle, all, or every:N (default: middle)")
    parser.add_argument("--axis", default="axial", choices=["axial", "coronal", "sagittal"],
                        help="NIfTI slicing axis, after reorientation to RAS+ (default: axial)")
    parser.add_argument("--allow-burned-in", action="store_true",
                        help="convert DICOM marked BurnedInAnnotation=YES (text in the pixels may identify the patient) "
                             "(default: refuse)")
    parser.add_argument("--patient-key", default=None, metavar="FILE",
                        help="secret key of the `patient` column, a keyed hash (HMAC-SHA256) of each DICOM PatientID; "
                             "made on first use; share the file within a team so pseudonyms agree, and never put it "
                             "in the dataset (default: MEDART_PATIENT_KEY, else patient-key in the user data folder)")


def conversion_options(args: argparse.Namespace):
    from medart_core.medical_io import ConvertOptions

    options = ConvertOptions(window=args.window, slices=args.slices, axis=args.axis, allow_burned_in=args.allow_burned_in,
                             patient_key=args.patient_key)
    options.check()
    return options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, nargs="+", metavar="DIR_OR_FILE",
                        help="DICOM (.dcm, .dicom) and NIfTI (.nii, .nii.gz) files, or folders searched recursively")
    parser.add_argument("--out", required=True,
                        help="output imagefolder: PNG slices named by a hash of the input file, metadata.jsonl "
                             "(file_name, label, source_file: one per DICOM series, slice, patient: a pseudonym), "
                             "deidentification-report.json; running again "
                             "updates it and keeps descriptions added since")
    parser.add_argument("--label", default=None,
                        help="class label of every image (default: the file's first sub-folder under an input folder, "
                             "the imagefolder convention; none for files directly in it)")
    parser.add_argument("--modality", default=None,
                        help="captioning template written as a \"modality\" column, e.g. ct or brain-mri (default: none)")
    add_conversion_arguments(parser)


def run(args: argparse.Namespace) -> None:
    from medart_core.medical_io import convert_to_imagefolder

    columns = {"modality": args.modality} if args.modality else None
    summary = convert_to_imagefolder(args.input, args.out, options=conversion_options(args), label=args.label,
                                     columns=columns)
    print(summary)
