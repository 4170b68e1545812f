"""engine.geometry: voxel <-> LPS <-> RAS, Slicer matrices, slice indexing and view axes."""

import numpy as np
import pytest
import SimpleITK as sitk

from MedSAMAdapterLib.engine import geometry as G
from MedSAMAdapterLib.engine.geometry import Geometry
from MedSAMAdapterLib.errors import InputError, PromptError


def _rot(axis: int, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    m = np.eye(3)
    p, q = [(1, 2), (0, 2), (0, 1)][axis]
    m[p, p], m[p, q], m[q, p], m[q, q] = c, -s, s, c
    return m


DIRECTIONS = {
    "identity": np.eye(3),
    "flipped": np.diag([-1.0, -1.0, 1.0]),  # RAS-stored data as LPS sees it
    "flipped_k": np.diag([1.0, -1.0, -1.0]),
    "oblique": _rot(2, -35) @ _rot(0, 20),  # rotation about two axes
}
SPACING = (0.7, 1.3, 2.9)
ORIGIN = (10.0, -20.0, 35.5)
SHAPE = (7, 9, 11)  # (k, j, i)


@pytest.fixture(params=sorted(DIRECTIONS))
def geom(request) -> Geometry:
    return Geometry(SPACING, ORIGIN, DIRECTIONS[request.param])


def _random_ijk(n=20, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-3, 12, size=(n, 3))


def test_ijk_lps_ras_round_trips(geom):
    ijk = _random_ijk()
    lps = geom.ijk_to_lps(ijk)
    np.testing.assert_allclose(geom.lps_to_ijk(lps), ijk, atol=1e-9)
    ras = geom.ijk_to_ras(ijk)
    np.testing.assert_allclose(ras, lps * [-1, -1, 1], atol=1e-9)
    np.testing.assert_allclose(geom.ras_to_ijk(ras), ijk, atol=1e-9)
    np.testing.assert_allclose(G.ras_to_lps(G.lps_to_ras(lps)), lps)


def test_single_point_keeps_shape(geom):
    p = geom.ijk_to_lps([1, 2, 3])
    assert p.shape == (3,)
    np.testing.assert_allclose(geom.lps_to_ijk(p), [1, 2, 3], atol=1e-9)


def test_physical_formula_matches_itk(geom):
    """origin + direction @ (spacing * ijk), exactly what ITK computes for the same image."""
    image = geom.apply_to_sitk(sitk.Image(SHAPE[::-1], sitk.sitkFloat32))
    for ijk in _random_ijk(5):
        expected = image.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in ijk))
        np.testing.assert_allclose(geom.ijk_to_lps(ijk), expected, atol=1e-9)
    assert Geometry.from_sitk(image).mismatch(geom) is None


def test_ijk_to_ras_matrix_consistent(geom):
    m = geom.ijk_to_ras_matrix()
    ijk = _random_ijk()
    homog = np.c_[ijk, np.ones(len(ijk))]
    np.testing.assert_allclose((homog @ m.T)[:, :3], geom.ijk_to_ras(ijk), atol=1e-9)
    np.testing.assert_allclose(m[3], [0, 0, 0, 1])
    back = Geometry.from_ijk_to_ras_matrix(m)
    assert back.mismatch(geom, rtol=1e-9) is None


def test_geometry_is_hashable_and_validated():
    a = Geometry(SPACING, ORIGIN, np.eye(3))
    b = Geometry(np.array(SPACING), np.array(ORIGIN), np.eye(3).tolist())
    assert a == b and hash(a) == hash(b)
    with pytest.raises(InputError, match="spacing"):
        Geometry((1.0, 0.0, 1.0))
    with pytest.raises(InputError, match="singular"):
        Geometry(direction=np.zeros((3, 3)))


def test_from_sitk_2d_image_becomes_one_slice_grid():
    image = sitk.Image(5, 4, sitk.sitkUInt8)
    image.SetSpacing((0.5, 0.25))
    image.SetOrigin((3.0, 4.0))
    g = Geometry.from_sitk(image)
    assert g.spacing == (0.5, 0.25, 1.0)
    assert g.origin == (3.0, 4.0, 0.0)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_physical_point_reads_same_voxel_through_slice(geom, axis):
    rng = np.random.default_rng(axis)
    array = rng.normal(size=SHAPE).astype(np.float32)
    for _ in range(10):
        i, j, k = rng.integers(0, SHAPE[2]), rng.integers(0, SHAPE[1]), rng.integers(0, SHAPE[0])
        ras = geom.ijk_to_ras([i, j, k]) + rng.uniform(-0.2, 0.2, 3) * min(SPACING)  # a click near the centre
        voxel = G.round_to_voxel(geom.ras_to_ijk(ras), SHAPE)
        assert tuple(voxel) == (i, j, k)
        index, rc = G.ijk_to_slice_rc(voxel[None], axis)
        plane = G.slice_plane(array, axis, int(index[0]))
        assert plane[tuple(rc[0])] == array[k, j, i]
        np.testing.assert_array_equal(G.slice_rc_to_ijk(rc, axis, index), voxel[None])


def test_slice_plane_rows_and_cols():
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4)  # (k, j, i)
    assert G.slice_plane(array, 0, 1).shape == (3, 4)  # (j, i)
    assert G.slice_plane(array, 1, 2).shape == (2, 4)  # (k, i)
    assert G.slice_plane(array, 2, 3).shape == (2, 3)  # (k, j)
    rgb = np.zeros((1, 3, 4, 3))
    assert G.slice_plane(rgb, 0, 0).shape == (3, 4, 3)


def test_ijk_to_slice_rc_mapping():
    ijk = np.array([[1, 2, 3]])  # i=1, j=2, k=3
    for axis, (index, rc) in {0: (3, (2, 1)), 1: (2, (3, 1)), 2: (1, (3, 2))}.items():
        got_index, got_rc = G.ijk_to_slice_rc(ijk, axis)
        assert got_index[0] == index and tuple(got_rc[0]) == rc


def test_insert_plane_writes_back_and_checks_shape():
    array = np.zeros((3, 4, 5), np.uint8)
    G.insert_plane(array, 1, 2, np.ones((3, 5), np.uint8))
    assert array[:, 2, :].all() and array.sum() == 15
    view = G.slice_plane(array, 2, 0)
    view[...] = 7  # a view, not a copy
    assert (array[:, :, 0] == 7).all()
    with pytest.raises(InputError, match="does not match"):
        G.insert_plane(array, 0, 0, np.ones((3, 5)))


def test_slice_index_out_of_range():
    with pytest.raises(PromptError, match="outside 0..2"):
        G.slice_plane(np.zeros((3, 4, 5)), 0, 3)
    with pytest.raises(PromptError):
        G.slice_plane(np.zeros((3, 4, 5)), 2, -1)  # no silent negative wrap-around
    with pytest.raises(InputError, match="axis"):
        G.slice_plane(np.zeros((3, 4, 5)), 3, 0)


def test_round_to_voxel_bounds_and_message():
    shape = (4, 5, 6)  # k, j, i
    assert tuple(G.round_to_voxel([-0.49, 0, 3.49], shape)) == (0, 0, 3)
    assert tuple(G.round_to_voxel([5.49, 4.2, 0], shape)) == (5, 4, 0)
    out = G.round_to_voxel(np.array([[0.4, 0.6, 1.5], [2, 2, 2]]), shape)
    assert out.dtype == np.int64 and out.tolist() == [[0, 1, 2], [2, 2, 2]]
    with pytest.raises(PromptError) as err:
        G.round_to_voxel([[1, 1, 1], [6.2, 1, 1]], shape)
    msg = str(err.value)
    assert "6.20" in msg and "i 0..5" in msg and "k 0..3" in msg
    with pytest.raises(PromptError):
        G.round_to_voxel([0, 0, -0.51], shape)
    with pytest.raises(PromptError):
        G.round_to_voxel([np.nan, 0, 0], shape)


def test_axis_for_view_identity():
    g = Geometry()
    assert [G.axis_for_view(g, v) for v in ("axial", "coronal", "sagittal")] == [0, 1, 2]


def test_axis_for_view_sagittal_acquisition():
    """Sagittal MR: i runs posterior, j runs inferior, k (slice direction) runs left."""
    direction = np.array([[0, 0, 1], [1, 0, 0], [0, -1, 0]], float)  # columns: i=P, j=I, k=L
    g = Geometry((0.5, 0.5, 3.0), (0, 0, 0), direction)
    assert G.axis_for_view(g, "sagittal") == 0  # slices of constant k
    assert G.axis_for_view(g, "axial") == 1  # constant j
    assert G.axis_for_view(g, "coronal") == 2  # constant i


def test_axis_for_view_oblique_and_flipped():
    g = Geometry(direction=_rot(0, 25) @ np.diag([-1.0, -1.0, 1.0]))  # tilted, RAS-flipped axial
    assert G.axis_for_view(g, "axial") == 0
    assert G.axis_for_view(g, "coronal") == 1
    assert G.axis_for_view(g, "sagittal") == 2
    with pytest.raises(InputError):
        G.axis_for_view(g, "oblique")  # type: ignore[arg-type]


def test_plane_spacing():
    g = Geometry(SPACING)
    assert g.plane_spacing(0) == (1.3, 0.7)
    assert g.plane_spacing(1) == (2.9, 0.7)
    assert g.plane_spacing(2) == (2.9, 1.3)
