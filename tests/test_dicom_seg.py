"""DICOM SEG output: a lung mask over the real chest CR (no frame of reference), a 3D mask over a synthetic CT
series, read back with pydicom and highdicom and checked with dciodvfy (dicom3tools); a third-party SEG (liver.dcm)
read back; and UA-VLS inference on the CR writing a PNG mask and a SEG in the radiograph's own pixel grid."""

import os
import shutil
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch
from monai.bundle import ConfigWorkflow
from monai.data import MetaTensor
from PIL import Image
from test_bundle_ua_vls import TINY_NET, save_tiny_checkpoint
from test_dicom_io import RAMP_LEVEL, RAMP_ORIGIN, RG1, SLICES, data_file, make_ct_series, ramp_hu, ramp_mask, voxel_lps
from test_dicom_io import write_ramp_series

from monai_vlseg.io import DicomReader, SaveDicomSegd, dicom_seg_to_label, load_dicom_series, read_dicom_seg
from monai_vlseg.io import write_dicom_seg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "bundles", "ua_vls", "configs")


def dciodvfy_errors(path) -> list[str]:
    """Error lines of dicom3tools' validator (installed by .ci/run; warnings are allowed)."""
    exe = shutil.which("dciodvfy")
    assert exe, "dciodvfy not found: apt-get install dicom3tools (the CI script does)"
    res = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    return [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("Error")]


def lung_mask(rows: int, cols: int) -> np.ndarray:
    """Two ellipses, asymmetric so that flips and transposes show."""
    r, c = np.mgrid[:rows, :cols]
    left = ((r - 0.45 * rows) / (0.28 * rows)) ** 2 + ((c - 0.30 * cols) / (0.13 * cols)) ** 2 < 1
    right = ((r - 0.50 * rows) / (0.22 * rows)) ** 2 + ((c - 0.70 * cols) / (0.15 * cols)) ** 2 < 1
    return left | right


def assert_patient_data_only_from_source(seg: pydicom.Dataset, src: pydicom.Dataset) -> None:
    for elem in seg:
        if elem.tag.group == 0x0010:  # patient module: copied from the source, or empty
            assert elem.value in (None, "", []) or (elem.tag in src and elem.value == src[elem.tag].value), elem


def test_seg_over_chest_radiograph(tmp_path):
    src = pydicom.dcmread(RG1, stop_before_pixels=True)
    mask = lung_mask(int(src.Rows), int(src.Columns))
    out = write_dicom_seg(mask, RG1, tmp_path / "rg1_seg.dcm", segment_label="lung", algorithm_name="ua_vls",
                          algorithm_version="0.1.0")  # fmt: skip
    ds = pydicom.dcmread(out)
    assert ds.SOPClassUID == pydicom.uid.SegmentationStorage and ds.SegmentationType == "BINARY"
    assert (ds.Rows, ds.Columns, int(ds.NumberOfFrames)) == (src.Rows, src.Columns, 1)
    np.testing.assert_array_equal(ds.pixel_array.astype(bool), mask)
    assert "FrameOfReferenceUID" not in ds and list(ds.PatientOrientation) == list(src.PatientOrientation)
    assert ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    derivation = ds.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
    assert derivation.ReferencedSOPInstanceUID == src.SOPInstanceUID
    segment = ds.SegmentSequence[0]
    assert segment.SegmentLabel == "lung" and segment.SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Lung"
    assert segment.SegmentAlgorithmName == "ua_vls" and ds.SoftwareVersions == "0.1.0"
    assert (ds.StudyInstanceUID, ds.PatientID) == (src.StudyInstanceUID, src.PatientID)
    assert_patient_data_only_from_source(ds, src)
    seg = hd.seg.segread(out)
    pixels = seg.get_pixels_by_source_instance([src.SOPInstanceUID])
    np.testing.assert_array_equal(pixels[0, ..., 0].astype(bool), mask)
    assert dciodvfy_errors(out) == []
    # the same mask in MONAI layout (x, y) with the reader's affine gives the same frame
    _, meta = DicomReader().get_data(DicomReader().read(RG1))
    monai_mask = MetaTensor(torch.as_tensor(mask.T[None].astype(np.float32)), affine=torch.as_tensor(meta["affine"]))
    out2 = write_dicom_seg(monai_mask, [RG1], tmp_path / "rg1_seg_monai.dcm", segment_label="lung")
    np.testing.assert_array_equal(read_dicom_seg(out2).array[0, ..., 0].astype(bool), mask)


def test_seg_over_ct_series_lines_up(tmp_path):
    s = make_ct_series(str(tmp_path / "ct"), n=6, rows=24, cols=20)
    vol = load_dicom_series(s["paths"][::-1])
    x, y, z = np.mgrid[: s["cols"], : s["rows"], : s["n"]]
    mask = ((x - 8) ** 2 + (y - 12) ** 2 < 30) & (z >= 1) & (z <= 4) & (x < 11)  # MONAI layout (x, y, z)
    pred = MetaTensor(torch.as_tensor(mask[None].astype(np.float32)), affine=torch.as_tensor(vol.affine))
    out = write_dicom_seg(pred, vol.paths, tmp_path / "ct_seg.dcm", segment_label="lesion")
    ds = pydicom.dcmread(out)
    first = pydicom.dcmread(vol.paths[0], stop_before_pixels=True)
    assert ds.FrameOfReferenceUID == first.FrameOfReferenceUID and int(ds.NumberOfFrames) == s["n"]
    measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    np.testing.assert_allclose([float(v) for v in measures.PixelSpacing], [float(v) for v in first.PixelSpacing])
    frame_pos = {  # referenced source instance -> the SEG frame's plane position
        f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID:
            [float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient]
        for f in ds.PerFrameFunctionalGroupsSequence
    }  # fmt: skip
    seg = hd.seg.segread(out)
    for k, path in enumerate(vol.paths):  # one frame over each slice, at the slice's own position
        src = pydicom.dcmread(path, stop_before_pixels=True)
        frame = seg.get_pixels_by_source_instance([src.SOPInstanceUID])[0, ..., 0]
        np.testing.assert_array_equal(frame.astype(bool), mask[:, :, k].T)
        ipp = [float(v) for v in src.ImagePositionPatient]
        np.testing.assert_allclose(frame_pos[src.SOPInstanceUID], ipp, atol=1e-3)
    assert dciodvfy_errors(out) == []
    # a mask on another grid (flipped x and z, as after an orientation change) is resampled back onto the source
    flip = np.diag([-1.0, 1.0, -1.0, 1.0])
    flip[0, 3], flip[2, 3] = s["cols"] - 1, s["n"] - 1
    flipped = MetaTensor(torch.as_tensor(mask[::-1, :, ::-1].copy()[None].astype(np.float32)),
                         affine=torch.as_tensor(vol.affine @ flip))  # fmt: skip
    back = read_dicom_seg(write_dicom_seg(flipped, s["paths"], tmp_path / "ct_seg_flipped.dcm"))
    np.testing.assert_array_equal(back.array[..., 0].astype(bool), mask.transpose(2, 1, 0))
    with pytest.raises(ValueError, match="do not match the sources"):
        write_dicom_seg(np.zeros((3, 24, 20)), vol.paths, tmp_path / "bad.dcm")


def check_seg_frames(out, paths, offsets, plane_offsets=None):
    """One SEG frame per source slice, referencing it, at its position, holding the object's cross-section there (or,
    with ``plane_offsets``, at the nearest of those planes: the grid the mask was computed on)."""
    ds, seg = pydicom.dcmread(out), hd.seg.segread(out)
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    assert {str(u[2]) for u in seg.get_source_image_uids()} == {str(s.SOPInstanceUID) for s in sources}
    assert int(ds.NumberOfFrames) == len(paths)
    frame_pos = {f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID:
                 [float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient]
                 for f in ds.PerFrameFunctionalGroupsSequence}  # fmt: skip
    for src, z in zip(sources, offsets, strict=True):
        frame = seg.get_pixels_by_source_instance([src.SOPInstanceUID])[0, ..., 0].astype(bool).T  # (x, y)
        np.testing.assert_allclose(frame_pos[src.SOPInstanceUID], [float(v) for v in src.ImagePositionPatient])
        if plane_offsets is None:
            np.testing.assert_array_equal(frame, ramp_mask(z))
        else:  # the ramp grows with z: the frame lies between the cross-sections at z -/+ the distance to the plane
            h = float(np.min(np.abs(plane_offsets - z))) + 1e-4
            assert not (ramp_mask(z - h) & ~frame).any() and not (frame & ~ramp_mask(z + h)).any(), z
    return ds


@pytest.mark.parametrize("case", ["missing", "irregular", "duplicate"])
def test_seg_over_off_grid_series_puts_each_frame_at_its_slice(tmp_path, case):
    offsets = SLICES["regular" if case == "duplicate" else case]
    folder = tmp_path / case
    paths = write_ramp_series(folder, offsets, duplicate=4 if case == "duplicate" else None)
    # a mask in patient space on another grid (0.5 mm along z, so every slice position is one of its planes)
    grid = np.diag([-1.0, -1.0, 0.5, 1.0])
    grid[:3, 3] = RAMP_ORIGIN * [-1, -1, 1]
    shape = (32, 32, int(offsets[-1] / 0.5) + 1)
    mask = ramp_hu(voxel_lps(grid, shape)) > RAMP_LEVEL
    pred = MetaTensor(torch.as_tensor(mask[None].astype(np.float32)), affine=torch.as_tensor(grid))
    out = write_dicom_seg(pred, str(folder), tmp_path / "seg_patient_grid.dcm")
    ds = check_seg_frames(out, paths, offsets)
    measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert ("SpacingBetweenSlices" in measures) == (case == "duplicate")  # no single spacing to claim otherwise
    assert dciodvfy_errors(out) == []
    # the mask computed on the volume the reader built (resampled onto a regular grid when off-grid)
    vol = load_dicom_series(folder)
    pred = MetaTensor(torch.as_tensor((vol.array > RAMP_LEVEL)[None].astype(np.float32)),
                      affine=torch.as_tensor(vol.affine))  # fmt: skip
    out = write_dicom_seg(pred, str(folder), tmp_path / "seg_read_grid.dcm")
    check_seg_frames(out, paths, offsets, plane_offsets=np.arange(vol.array.shape[2]) * vol.spacing[2])


def test_fractional_seg_of_probabilities_over_a_ct_series(tmp_path):
    """Probabilities as a FRACTIONAL PROBABILITY SEG: each frame over its slice, values kept to 8 bits; outside
    [0, 1] refused; dciodvfy finds no error."""
    s = make_ct_series(str(tmp_path / "ct"), n=4, rows=16, cols=12)
    vol = load_dicom_series(s["paths"])
    prob = np.random.default_rng(0).random((s["cols"], s["rows"], s["n"])).astype(np.float32)  # MONAI (x, y, z)
    pred = MetaTensor(torch.as_tensor(prob[None]), affine=torch.as_tensor(vol.affine))
    out = write_dicom_seg(pred, vol.paths, tmp_path / "prob_seg.dcm", fractional=True)
    ds = pydicom.dcmread(out)
    assert ds.SegmentationType == "FRACTIONAL" and int(ds.MaximumFractionalValue) == 255
    back = read_dicom_seg(out)
    by_uid = dict(zip(back.source_sop_instance_uids, back.array[..., 0]))
    for k, path in enumerate(vol.paths):
        uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        np.testing.assert_allclose(by_uid[uid], prob[:, :, k].T, atol=0.5 / 255 + 1e-6)
    assert dciodvfy_errors(out) == []
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        write_dicom_seg(pred * 2, vol.paths, tmp_path / "bad.dcm", fractional=True)


@pytest.mark.parametrize("case", ["regular", "missing"])
def test_label_map_seg_of_two_segments_reads_back_onto_the_series_grid(tmp_path, case):
    """A reader's label map (two segments, SEMIAUTOMATIC) over a CT series, and back with dicom_seg_to_label onto the
    grid load_dicom_series builds (a series with a missing slice: resampled, each grid slice from its nearest source
    slice); a MANUAL binary SEG over the radiograph back onto its pixels; label values beyond the segments refused."""
    offsets = SLICES[case]
    folder = tmp_path / case
    write_ramp_series(folder, offsets)
    vol = load_dicom_series(folder)
    labels = np.zeros(vol.array.shape, dtype=np.uint8)
    labels[4:20, 6:24, :] = 1
    labels[10:14, 12:16, 1:-1] = 2  # inside segment 1, on all but the end slices
    pred = MetaTensor(torch.as_tensor(labels[None]), affine=torch.as_tensor(vol.affine))
    out = write_dicom_seg(pred, str(folder), tmp_path / "labels.dcm", segment_label=["liver", "lesion"],
                          algorithm_type="SEMIAUTOMATIC")  # fmt: skip
    ds = pydicom.dcmread(out)
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["liver", "lesion"]
    assert {s.SegmentAlgorithmType for s in ds.SegmentSequence} == {"SEMIAUTOMATIC"}
    assert dciodvfy_errors(out) == []
    back = dicom_seg_to_label(out, str(folder))
    assert back.array.shape == labels.shape and np.allclose(back.affine, vol.affine)
    if case == "regular":
        np.testing.assert_array_equal(back.array, labels)
    else:  # the grid slices between source slices take the nearest source slice's frame
        src = [int(np.argmin(np.abs(np.arange(labels.shape[2]) * vol.spacing[2] - o))) for o in offsets]
        np.testing.assert_array_equal(back.array[..., src], labels[..., src])
    with pytest.raises(ValueError, match="integer values 0..2"):
        write_dicom_seg(pred * 2, str(folder), tmp_path / "bad.dcm", segment_label=["liver", "lesion"])

    src = pydicom.dcmread(RG1, stop_before_pixels=True)
    mask = lung_mask(int(src.Rows), int(src.Columns))
    out = write_dicom_seg(mask, RG1, tmp_path / "manual.dcm", segment_label="lung", algorithm_type="MANUAL")
    ds = pydicom.dcmread(out)
    assert ds.SegmentSequence[0].SegmentAlgorithmType == "MANUAL" and "SegmentationAlgorithmIdentificationSequence" \
        not in ds.SegmentSequence[0]
    back = dicom_seg_to_label(out, RG1)
    np.testing.assert_array_equal(back.array, mask.T.astype(np.uint8))  # MONAI layout (x, y) of the radiograph


def test_read_third_party_seg_liver():
    path = data_file("liver.dcm")
    seg = read_dicom_seg(path)
    ds = pydicom.dcmread(path)
    assert seg.segment_labels == ["Liver"] and seg.array.shape == (3, 512, 512, 1)
    assert seg.frame_of_reference_uid == ds.FrameOfReferenceUID
    raw = ds.pixel_array  # (frames, rows, cols), frame i derived from its SourceImageSequence instance
    for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        np.testing.assert_array_equal(seg.array[seg.source_sop_instance_uids.index(uid), ..., 0], raw[i])
    assert seg.array.sum() > 0


def test_save_dicom_segd_only_for_dicom_inputs(tmp_path):
    s = make_ct_series(str(tmp_path / "ct"), n=4)
    vol = load_dicom_series(s["paths"])
    pred = MetaTensor(torch.ones(1, *vol.array.shape), affine=torch.as_tensor(vol.affine),
                      meta={"filename_or_obj": str(tmp_path / "images" / "ct_abc.nii.gz")})  # fmt: skip
    meta = {"name": "UA-VLS", "version": "0.1.0",
            "network_data_format": {"outputs": {"pred": {"channel_def": {"0": "lesion"}}}}}  # fmt: skip
    save = SaveDicomSegd("pred", output_dir=str(tmp_path / "out"), metadata=meta)
    d = save({"pred": pred, "dicom_sources": s["paths"]})
    assert os.path.basename(d["pred_dicom_seg"]) == "ct_abc_seg.dcm"
    ds = pydicom.dcmread(d["pred_dicom_seg"])
    assert ds.SegmentSequence[0].SegmentLabel == "lesion" and ds.SegmentSequence[0].SegmentAlgorithmName == "UA-VLS"
    png_pred = MetaTensor(torch.ones(1, 8, 8), meta={"filename_or_obj": str(tmp_path / "x.png")})
    assert "pred_dicom_seg" not in save({"pred": png_pred})  # not DICOM: nothing written


@pytest.fixture(scope="module")
def ua_vls_root(tmp_path_factory):
    """A bundle root with an untrained tiny UA-VLS checkpoint (geometry, not accuracy, is under test)."""
    root = tmp_path_factory.mktemp("ua_vls_dicom")
    save_tiny_checkpoint(root / "models" / "model.pt")
    return root


def run_ua_vls_inference(root, src_dir, out, text):
    """ua_vls inference.json (tiny network, 64², DICOM SEG on) over ``src_dir`` with one text for every image."""
    wf = ConfigWorkflow(
        workflow_type="infer", config_file=os.path.join(CONFIGS, "inference.json"),
        meta_file=os.path.join(CONFIGS, "metadata.json"), logging_file=os.path.join(CONFIGS, "logging.conf"),
        bundle_root=str(root), output_dir=str(out), input_dir=str(src_dir), image_size=[64, 64], text=text,
        dicom_seg=True, **TINY_NET,
    )  # fmt: skip
    wf.initialize()
    wf.run()
    wf.finalize()
    return out


def test_ua_vls_inference_on_dicom_writes_png_and_seg(ua_vls_root, tmp_path):
    src_dir = tmp_path / "in"
    src_dir.mkdir()
    shutil.copy(RG1, src_dir / "RG1.dcm")
    Image.fromarray(np.full((40, 30), 128, np.uint8)).save(src_dir / "plain.png")  # not DICOM: no SEG
    out = run_ua_vls_inference(ua_vls_root, src_dir, tmp_path / "out", "Bilateral pulmonary infection, two infected areas.")
    assert sorted(p for p in os.listdir(out) if p.endswith(".dcm")) == ["RG1_prob_seg.dcm", "RG1_seg.dcm"]
    src = pydicom.dcmread(RG1, stop_before_pixels=True)
    png = np.asarray(Image.open(out / "RG1_seg.png"))
    assert png.shape == (src.Rows, src.Columns) == (1955, 1841)  # the radiograph's own pixel grid
    assert set(np.unique(png)) <= {0, 255}
    ds = pydicom.dcmread(out / "RG1_seg.dcm")
    assert (ds.Rows, ds.Columns) == (src.Rows, src.Columns)
    assert ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    segment = ds.SegmentSequence[0]
    assert segment.SegmentLabel == "lesion"  # metadata.json output channel_def
    assert segment.SegmentAlgorithmName == "UA-VLS text-guided lesion segmentation"
    np.testing.assert_array_equal(ds.pixel_array.astype(bool), png > 0)  # SEG and PNG mask agree pixel for pixel
    assert dciodvfy_errors(out / "RG1_seg.dcm") == []
    # beside it, the probability map as a FRACTIONAL SEG over the same radiograph: the 16-bit PNG's values in 8 bits
    prob = pydicom.dcmread(out / "RG1_prob_seg.dcm")
    assert prob.SegmentationType == "FRACTIONAL" and prob.SegmentationFractionalType == "PROBABILITY"
    assert prob.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert prob.SeriesNumber == 301 and prob.SeriesInstanceUID != ds.SeriesInstanceUID
    p16 = np.asarray(Image.open(out / "RG1_prob.png")).astype(np.float64) / 65535
    np.testing.assert_allclose(read_dicom_seg(out / "RG1_prob_seg.dcm").array[0, ..., 0], p16, atol=1 / 255 + 1e-6)
    assert dciodvfy_errors(out / "RG1_prob_seg.dcm") == []
    review = (out / "report_review.csv").read_text().splitlines()
    assert review[0].endswith(",input_warnings") and review[1].endswith(",")  # a chest CR: no input warning


def test_ua_vls_inference_flags_a_ct_slice_and_a_hand_radiograph(ua_vls_root, tmp_path):
    """A chest-X-ray model given a CT slice or a CR of a hand (issue 18.5): masks are still written, but the SEG
    series says NEEDS REVIEW and the review CSV names the reason."""
    import csv

    src_dir = tmp_path / "in"
    src_dir.mkdir()
    shutil.copy(data_file("CT_small.dcm"), src_dir / "ct.dcm")
    shutil.copy(data_file("RG3_UNCI.dcm"), src_dir / "hand.dcm")
    out = run_ua_vls_inference(ua_vls_root, src_dir, tmp_path / "out", "Opacity in the lower left lung.")
    for stem in ("ct", "hand"):
        assert pydicom.dcmread(out / f"{stem}_seg.dcm").SeriesDescription.startswith("NEEDS REVIEW"), stem
    with open(out / "report_review.csv", encoding="utf-8") as f:
        review = {os.path.basename(r["image"]): r for r in csv.DictReader(f)}
    assert review["ct.dcm"]["needs_review"] == review["hand.dcm"]["needs_review"] == "True"
    assert "DICOM Modality CT" in review["ct.dcm"]["input_warnings"]
    assert "BodyPartExamined EXTREMITY" in review["hand.dcm"]["input_warnings"]
    assert review["ct.dcm"]["report_zones"] == "lower left"  # the text itself was fine
