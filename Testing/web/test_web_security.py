"""Bind / token / data-folder / upload rules of the web viewer (pure Python, no trame, no browser)."""

from __future__ import annotations

import os

import pytest

from MedSAMAdapterLib.errors import InputError
from MedSAMAdapterLib.web.security import (DataRoots, UploadLimit, check_bind, is_loopback, request_token,
                                           safe_file_name, token_matches, url_for)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.3.4.5", "localhost", "LOCALHOST", "::1", "[::1]"])
def test_loopback_addresses(host):
    assert is_loopback(host)
    check_bind(host, None)  # no token needed


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "10.0.0.1", "example.org", "my-host"])
def test_exposed_bind_needs_a_token(host):
    assert not is_loopback(host)
    with pytest.raises(InputError, match="--token"):
        check_bind(host, None)
    with pytest.raises(InputError, match="--token"):
        check_bind(host, "")
    check_bind(host, "a-long-enough-token")


def test_short_token_and_empty_host_are_refused():
    with pytest.raises(InputError, match="at least 8"):
        check_bind("0.0.0.0", "short")
    with pytest.raises(InputError, match="empty"):
        check_bind("  ", None)


def test_token_matching_and_where_a_request_carries_it():
    assert token_matches(None, None) and token_matches("anything", "")
    assert token_matches("s3cret-token", "s3cret-token")
    assert not token_matches("s3cret-tokeN", "s3cret-token")
    assert not token_matches(None, "s3cret-token") and not token_matches("", "s3cret-token")
    assert request_token({"token": "q"}, {"Authorization": "Bearer h"}, {"c": "k"}, "c") == "q"
    assert request_token({}, {"Authorization": "Bearer h"}, {"c": "k"}, "c") == "h"
    assert request_token({}, {}, {"c": "k"}, "c") == "k"
    assert request_token({}, {}, {}, "c") is None


@pytest.fixture
def roots(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "ct.nii.gz").write_bytes(b"x")
    (data / "mask.seg.nrrd").write_bytes(b"x")
    secret = tmp_path / "secret.nrrd"
    secret.write_bytes(b"x")
    os.symlink(secret, data / "link_out.nrrd")
    os.symlink(tmp_path, data / "dir_out")
    os.symlink(data / "sub" / "ct.nii.gz", data / "link_in.nii.gz")
    return DataRoots([data]), data, secret


def test_paths_inside_the_data_folders_resolve(roots):
    found, data, _ = roots
    assert found.resolve(str(data / "sub" / "ct.nii.gz")) == (data / "sub" / "ct.nii.gz").resolve()
    assert found.resolve("sub/ct.nii.gz") == (data / "sub" / "ct.nii.gz").resolve()  # relative = first folder
    assert found.resolve("link_in.nii.gz") == (data / "sub" / "ct.nii.gz").resolve()  # a link staying inside
    assert found.resolve("new.seg.nrrd", must_exist=False) == data.resolve() / "new.seg.nrrd"


@pytest.mark.parametrize("path", ["../secret.nrrd", "sub/../../secret.nrrd", "/etc/passwd", "link_out.nrrd",
                                  "dir_out/secret.nrrd", "~/x.nrrd"])
def test_traversal_absolute_paths_and_escaping_symlinks_are_refused(roots, path):
    found, _, _ = roots
    with pytest.raises(InputError, match="outside the data folders"):
        found.resolve(path, must_exist=False)


def test_missing_file_empty_path_and_no_data_dir(roots, tmp_path):
    found, _, _ = roots
    with pytest.raises(InputError, match="no such file"):
        found.resolve("nope.nrrd")
    with pytest.raises(InputError, match="give a file path"):
        found.resolve("  ")
    with pytest.raises(InputError, match="--data-dir"):
        DataRoots([]).resolve("x.nrrd")
    with pytest.raises(InputError, match="not a folder"):
        DataRoots([tmp_path / "missing"])


def test_listing_shows_images_inside_only(roots):
    found, data, secret = roots
    listed = found.listing()
    assert str(data / "sub" / "ct.nii.gz") in listed
    assert not any(p.endswith(".seg.nrrd") for p in listed)  # segmentations are not volumes to open
    assert str(data / "link_out.nrrd") not in listed and str(secret) not in listed


@pytest.mark.parametrize("name,expected", [("ct.nii.gz", "ct.nii.gz"), ("../../etc/passwd", "passwd"),
                                           ("C:\\x\\scan.nrrd", "scan.nrrd"), ("a b;rm.png", "a_b_rm.png"),
                                           ("..", "upload"), ("", "upload"), (".hidden", "hidden")])
def test_uploaded_names_become_one_harmless_component(name, expected):
    assert safe_file_name(name) == expected


def test_upload_limit():
    limit = UploadLimit(1000)
    limit.check(1000)
    limit.check(None)
    with pytest.raises(InputError, match="too large"):
        limit.check(1001)


def test_url_for():
    assert url_for("127.0.0.1", 8080, None) == "http://127.0.0.1:8080/"
    assert url_for("0.0.0.0", 80, "tok") == "http://127.0.0.1:80/?token=tok"
    assert url_for("::1", 9, None) == "http://[::1]:9/"
