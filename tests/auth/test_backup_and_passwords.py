"""Backup code format and sheet; local scrypt password hashes."""

from __future__ import annotations

from roamgate.auth import backup_codes
from roamgate.auth.passwords import hash_password, verify_password


def test_ten_distinct_numeric_codes() -> None:
    codes = backup_codes.generate()
    assert len(codes) == 10 == len(set(codes))
    assert all(len(c) == 10 and c.isdigit() for c in codes)
    assert backup_codes.generate() != codes


def test_parse_accepts_what_people_type() -> None:
    assert backup_codes.parse("12345-67890") == "1234567890"
    assert backup_codes.parse(" 12345 67890 ") == "1234567890"
    assert backup_codes.parse("123456") is None  # an OTP, not a backup code
    assert backup_codes.parse("12345-6789x") is None


def test_sheet_lists_every_code_once() -> None:
    codes = backup_codes.generate()
    sheet = backup_codes.sheet("alice", codes, "2026-12-03", "gw.example.com")
    for c in codes:
        assert sheet.count(backup_codes.display(c)) == 1
    assert "alice" in sheet and "works once" in sheet


def test_scrypt_round_trip_and_rejections() -> None:
    encoded = hash_password("correct horse")
    assert encoded.startswith("$scrypt$ln=15,r=8,p=1$")
    assert "correct horse" not in encoded
    assert verify_password("correct horse", encoded)
    assert not verify_password("correct horsE", encoded)
    assert not verify_password("", encoded)
    assert hash_password("correct horse") != encoded  # salted
    for broken in ("", "$scrypt$", "$scrypt$ln=99,r=8,p=1$AA$AA", "plain", encoded[:-4]):
        assert not verify_password("correct horse", broken)
