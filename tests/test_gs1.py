"""GS1 parsing against GS1's published examples and the rules of the Barcode Syntax Dictionary."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coldchain.errors import ValidationError
from coldchain.gs1 import (
    GS1Error,
    gtin_check_digit,
    identify_lot,
    identify_product,
    load_dictionary,
    parse,
    syntax_dictionary,
)

TODAY = date(2026, 12, 1)
GTIN = "09506000134352"


def hri(data: str, **kwargs: object) -> str:
    return parse(data, today=TODAY, **kwargs).hri  # type: ignore[arg-type]


def refused(data: str, ai: str | None, rule: str, **kwargs: object) -> GS1Error:
    with pytest.raises(GS1Error) as caught:
        parse(data, today=TODAY, **kwargs)  # type: ignore[arg-type]
    assert (caught.value.ai, caught.value.rule) == (ai, rule), str(caught.value)
    if ai is not None:
        assert f"({ai})" in str(caught.value)
    return caught.value


# --- the dictionary ---------------------------------------------------------------------------


def test_the_packaged_dictionary_is_parsed_whole() -> None:
    dictionary = syntax_dictionary()
    assert dictionary.release == "2026-01-27"
    gtin = dictionary.definitions["01"]
    assert (gtin.title, gtin.separator_required, gtin.dl_attribute) == ("GTIN", False, True)
    assert gtin.components[0].linters == ("csum", "gcppos2")
    assert gtin.dl_qualifiers == (("22", "10", "21"), ("235",))
    assert gtin.excludes == ("255", "37")
    lot = dictionary.definitions["10"]
    assert (lot.separator_required, lot.min_length, lot.max_length) == (True, 1, 20)
    assert lot.requires == ((("01",), ("02",), ("03",), ("8006",), ("8026",)),)
    # Ranges expand: 3100-3105 and 91-99 are separate AIs.
    assert {"3100", "3105", "91", "99"} <= dictionary.definitions.keys()
    assert "3106" not in dictionary.definitions
    assert dictionary.definitions["250"].requires == ((("01",), ("8006",)), (("21",),))
    assert dictionary.definitions["7004"].requires == ((("01", "10"),),)
    assert dictionary.definitions["253"].components[1].optional
    assert dictionary.definitions["17"].date_format == "yymmd0"
    assert ("01", "22", "10", "21") in dictionary.dl_path_sequences
    assert ("01", "10") in dictionary.dl_path_sequences
    assert ("01", "21", "10") not in dictionary.dl_path_sequences
    assert ("01", "235") in dictionary.dl_path_sequences


def test_a_dictionary_with_an_unknown_token_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown token"):
        load_dictionary("01 *? N14,csum frobnicate=1 # GTIN\n")


# --- the carrier forms ---------------------------------------------------------------------------


EXPECTED = f"(01){GTIN}(17)270531(10)A123(21)S/1"


@pytest.mark.parametrize(
    "data",
    [
        EXPECTED,
        f"01{GTIN}1727053110A123\x1d21S/1",
        f"^01{GTIN}1727053110A123^21S/1",
        f"\x1d01{GTIN}1727053110A123\x1d21S/1\r\n",
        f"]d201{GTIN}1727053110A123\x1d21S/1",
        f"]C101{GTIN}1727053110A123\x1d21S/1",
        f"]Q301{GTIN}1727053110A123\x1d21S/1",
        f"]e001{GTIN}1727053110A123\x1d21S/1",
        f"]J101{GTIN}1727053110A123\x1d21S/1",
        f"https://id.gs1.org/01/{GTIN}/10/A123/21/S%2F1?17=270531",
        f"HTTPS://example.com/some/stem/01/{GTIN}/10/A123/21/S%2F1?17=270531#top",
        f"]Q1https://id.gs1.org/01/{GTIN}/10/A123/21/S%2F1?17=270531",
        f"]d1https://id.gs1.org/01/{GTIN}/10/A123/21/S%2F1?17=270531",
    ],
)
def test_every_form_gives_the_same_elements(data: str) -> None:
    parsed = parse(data, today=TODAY)
    assert sorted(parsed.hri.replace("(", " (").split()) == sorted(EXPECTED.replace("(", " (").split())
    assert (parsed.gtin, parsed.lot, parsed.serial, parsed.expiry) == (GTIN, "A123", "S/1", date(2027, 5, 31))
    assert parsed.digital_link() == f"https://id.gs1.org/01/{GTIN}/10/A123/21/S%2F1?17=270531"


def test_gs1_published_examples() -> None:
    # GS1 General Specifications and Digital Link standard examples.
    assert hri("(01)09520123456788(3103)000195(3922)0299(17)201225") == (
        "(01)09520123456788(3103)000195(3922)0299(17)201225"
    )
    assert hri("]d201095011010209171719050810ABCD1234\x1d2110") == (
        "(01)09501101020917(17)190508(10)ABCD1234(21)10"
    )
    assert hri("https://id.gs1.org/01/09520123456788/10/ABC1/21/12345?17=180426") == (
        "(01)09520123456788(10)ABC1(21)12345(17)180426"
    )
    assert hri("https://id.gs1.org/00/952012345678912345?02=09520123456788&37=25&10=ABC123") == (
        "(00)952012345678912345(02)09520123456788(37)25(10)ABC123"
    )
    assert hri("https://id.gs1.org/414/9520123456788/254/32a%2Fb") == "(414)9520123456788(254)32a/b"
    assert hri("https://example.com/8004/9520614141234567?01=09520123456788") == (
        "(8004)9520614141234567(01)09520123456788"
    )
    assert hri("(8013)1987654Ad4X4bL5ttr2310c2K") == "(8013)1987654Ad4X4bL5ttr2310c2K"  # GMN check pair
    sscc = parse("(00)106141412345678908", today=TODAY)
    assert sscc.sscc == "106141412345678908"
    assert sscc.digital_link() == "https://id.gs1.org/00/106141412345678908"


def test_ean_scan_data_carries_a_gtin() -> None:
    parsed = parse("]E09506000134352", today=TODAY)
    assert (parsed.gtin, parsed.symbology) == (GTIN, "]E0")
    assert parse("]E496385074", today=TODAY).gtin == "00000096385074"
    composite = parse("]E09506000134352|]e01727053110A123", today=TODAY)
    assert composite.hri == f"(01){GTIN}(17)270531(10)A123"
    refused("]E09506000134353", "01", "csum")
    refused("]E0950600013435", "01", "symbology")


def test_scan_data_needs_a_gs1_symbology() -> None:
    refused("]A0ABC", None, "symbology")
    refused("]d1PLAIN TEXT", None, "symbology")
    refused("]d201095060001343521^0A", None, "scan-syntax")
    refused("]d", None, "symbology")


def test_bracketed_values_may_hold_an_escaped_bracket() -> None:
    parsed = parse(f"(01){GTIN}(10)AB\\(C", today=TODAY)
    assert parsed.lot == "AB(C"
    assert parsed.hri == f"(01){GTIN}(10)AB\\(C"
    refused("(01", None, "hri-syntax")
    refused(f"X(01){GTIN}", None, "unknown-ai")
    refused("(89)X", "89", "unknown-ai")


# --- element strings -------------------------------------------------------------------------------


def test_element_strings_need_separators_after_variable_values() -> None:
    # Without a GS after the lot, the rest is read as part of it, and it is too long.
    refused(f"01{GTIN}10A12345678901234567890", "10", "length")
    # Predefined-length AIs need no separator (and tolerate one).
    assert parse(f"01{GTIN}\x1d17270531", today=TODAY).expiry == date(2027, 5, 31)
    refused(f"01{GTIN}2312", None, "unknown-ai")
    refused("0109506000134", "01", "length")  # data ends inside a fixed-length value
    refused("", None, "empty")
    refused("^", None, "empty")


# --- check digits, dates, lengths and character sets --------------------------------------------------


def test_check_digits_of_gtin_sscc_and_gln() -> None:
    refused("(01)09506000134353", "01", "csum")
    refused("(00)106141412345678909", "00", "csum")
    refused("(414)9520123456789", "414", "csum")
    refused("(8013)1987654Ad4X4bL5ttr2310c2L", "8013", "csumalpha")


@given(st.text(alphabet="0123456789", min_size=13, max_size=13))
def test_one_check_digit_in_ten_passes(body: str) -> None:
    good = gtin_check_digit(body)
    assert parse(f"(01){body}{good}", today=TODAY).gtin == body + str(good)
    with pytest.raises(GS1Error, match=r"\(01\).*csum"):
        parse(f"(01){body}{(good + 1) % 10}", today=TODAY)


def test_dates() -> None:
    def expiry(yymmdd: str) -> date | None:
        return parse(f"(01){GTIN}(17){yymmdd}", today=TODAY).expiry

    assert expiry("270200") == date(2027, 2, 28)  # DD=00: the month's last day
    assert expiry("280200") == date(2028, 2, 29)
    assert expiry("271200") == date(2027, 12, 31)
    assert expiry("280229") == date(2028, 2, 29)
    # Two-digit years: up to 49 years ahead, else the last century (GS1 GS 7.12).
    assert expiry("750101") == date(2075, 1, 1)
    assert expiry("770101") == date(1977, 1, 1)
    refused(f"(01){GTIN}(17)270229", "17", "yymmd0")
    refused(f"(01){GTIN}(17)271301", "17", "yymmd0")
    refused(f"(01){GTIN}(17)270132", "17", "yymmd0")
    refused(f"(01){GTIN}(17)2701", "17", "length")
    # yymmdd (no DD=00) for the first freeze date; yyyymmdd for a date of birth.
    refused(f"(01){GTIN}(7006)270500", "7006", "yymmdd")
    dob = parse("(8018)123456789012345675(7250)19991231", today=TODAY).elements[1]
    assert dob.date == date(1999, 12, 31)
    refused("(8018)123456789012345675(7250)19990231", "7250", "yyyymmdd")
    refused(f"(01){GTIN}(7003)2701011260", "7003", "hhmi")


def test_lengths_and_character_sets() -> None:
    refused(f"(01){GTIN}(10){'A' * 21}", "10", "length")
    refused(f"(01){GTIN}(10)A B", "10", "cset82")
    refused(f"(01){GTIN}(10)LÖT", "10", "cset82")
    refused("(8010)abc(8011)1", "8010", "cset39")
    assert hri("(8010)0614-AB/#(8011)12") == "(8010)0614-AB/#(8011)12"
    refused("(8010)AB-1(8011)12", "8010", "gcppos1")
    refused(f"(01){GTIN}(30)12a", "30", "numeric")
    refused(f"(01){GTIN}(21)S(8030)ab+c", "8030", "cset64")
    assert hri(f"(01){GTIN}(21)S(8030)ab-_cd==") == f"(01){GTIN}(21)S(8030)ab-_cd=="
    refused(f"(01){GTIN}(10)", "10", "length")
    refused("(00)1061414123456789", "00", "length")


def test_other_linters_named_by_the_dictionary() -> None:
    refused(f"(01){GTIN}(8001)00001234512301", "8001", "nonzero")
    refused(f"(01){GTIN}(8001)12341234512351", "8001", "winding")
    assert hri(f"(01){GTIN}(8001)12341234512391").startswith(f"(01){GTIN}")
    refused("(8006)095060001343520302", "8006", "pieceoftotal")
    assert hri("(8006)095060001343520203").startswith("(8006)")
    refused("(8010)0614ABC(8011)012", "8011", "nozeroprefix")
    refused("(00)106141412345678908(4321)2", "4321", "yesno")
    refused("(00)106141412345678908(4330)001234+", "4330", "hyphen")
    refused("(00)106141412345678908(4300)ACME%2", "4300", "pcenc")


# --- association rules ---------------------------------------------------------------------------------


def test_requisites_are_checked_unless_switched_off() -> None:
    error = refused("(10)A123", "10", "req=01,02,03,8006,8026")
    assert "01" in str(error)
    assert hri("(10)A123", check_requisites=False) == "(10)A123"
    refused(f"(01){GTIN}(7004)12", "7004", "req=01+10")  # both 01 and 10 are needed
    assert hri(f"(01){GTIN}(10)A(7004)12").endswith("(7004)12")
    refused(f"(01){GTIN}(250)X", "250", "req=21")  # 250 has two req= and both must hold


def test_exclusions_hold_even_without_requisites() -> None:
    refused(f"(01){GTIN}(21)A(235)B", "21", "ex=235")
    refused(f"(01){GTIN}(3100)000001(3101)000002", "3100", "ex=310n")
    assert hri(f"(01){GTIN}(3100)000001(3200)000002").endswith("(3200)000002")
    refused(f"(01){GTIN}(02){GTIN}", "02", "ex=01,03", check_requisites=False)


def test_repeated_ais_must_agree() -> None:
    assert parse(f"(01){GTIN}(10)A(01){GTIN}", today=TODAY).gtin == GTIN
    refused(f"(01){GTIN}(10)A(10)B", "10", "repeat")


def test_a_digital_signature_needs_a_serialised_key() -> None:
    refused("(253)9506000134352(8030)abc", "253", "digsig-serial")
    assert hri("(253)9506000134352X1(8030)abc").startswith("(253)")


# --- Digital Link ---------------------------------------------------------------------------------------


def test_zero_suppressed_gtins_are_refused_in_digital_links() -> None:
    refused("https://id.gs1.org/01/9506000134352", "01", "length")
    refused("https://id.gs1.org/01/96385074", "01", "length")
    refused("https://example.com/8004/9520614141234567?01=2112345678900", "01", "length")


def test_digital_link_qualifiers_keep_the_dictionarys_order() -> None:
    refused(f"https://id.gs1.org/01/{GTIN}/21/S1/10/A1", "10", "dl-qualifier-order")
    refused(f"https://id.gs1.org/01/{GTIN}/22/V/235/T", "235", "dl-qualifier-order")
    refused("https://a/01/12312312312333/99/ABC", "99", "dl-qualifier-order")
    assert hri(f"https://id.gs1.org/01/{GTIN}/22/V/21/S1") == f"(01){GTIN}(22)V(21)S1"
    assert hri(f"https://id.gs1.org/01/{GTIN}/235/T?17=270531") == f"(01){GTIN}(235)T(17)270531"
    # A qualifier in the query belongs in the path, unless another alternative was taken.
    refused(f"https://id.gs1.org/01/{GTIN}?10=ABC123", "10", "dl-qualifier-in-query")


def test_digital_link_uri_rules() -> None:
    refused(f"HtTpS://id.gs1.org/01/{GTIN}", None, "uri-syntax")
    refused(f"ftp://id.gs1.org/01/{GTIN}", None, "uri-syntax")
    refused(f"https://a$b/01/{GTIN}", None, "uri-syntax")
    refused(f"https://id.gs1.org/01/{GTIN}<bad", None, "uri-syntax")
    refused("https://id.gs1.org/", None, "dl-path")
    refused(f"https://id.gs1.org/01/{GTIN}/", None, "dl-path")  # cannot end in a slash
    refused(f"https://id.gs1.org/01/{GTIN}/10/", "10", "dl-path")
    refused(f"https://id.gs1.org/01/{GTIN}/10/A%00B", "10", "dl-path")
    refused(f"https://id.gs1.org/01/{GTIN}?999=x", "999", "unknown-ai")
    refused(f"https://id.gs1.org/01/{GTIN}?99=", "99", "dl-query")
    refused(f"https://id.gs1.org/01/{GTIN}/10/A?99=X&10=A", "10", "dl-duplicate")
    refused(f"https://id.gs1.org/01/{GTIN}?254=X", "254", "dl-query-attribute")
    # Non-AI and singleton parameters and fragments are ignored; "+" is a space only in the query.
    parsed = parse(
        f"https://id.gs1.org/01/{GTIN}/10/A%2B1+2?&&linkType=all&singleton&99=X%2FY&98=Z#f",
        today=TODAY,
    )
    assert parsed.hri == f"(01){GTIN}(10)A+1+2(99)X/Y(98)Z"
    refused(f"https://id.gs1.org/01/{GTIN}?99=A+B", "99", "cset82")  # a space is not in set 82
    # The rightmost key wins; AI-like segments in the stem are ignored.
    assert hri("https://a/00/faux/00/006141411234567890") == "(00)006141411234567890"


def test_digital_link_output_leaves_out_what_cannot_be_in_one() -> None:
    assert parse(f"(01){GTIN}(10)A/B(3103)000195", today=TODAY).digital_link() == (
        f"https://id.gs1.org/01/{GTIN}/10/A%2FB?3103=000195"
    )
    assert parse(f"(01){GTIN}(254)X", today=TODAY, check_requisites=False).digital_link() is None
    assert parse("(10)A", today=TODAY, check_requisites=False).digital_link() is None
    assert parse(f"(01){GTIN}", today=TODAY).digital_link("https://brand.example/") == (
        f"https://brand.example/01/{GTIN}"
    )


def test_gs1_errors_are_validation_errors_on_the_data_field() -> None:
    with pytest.raises(ValidationError) as caught:
        parse("(01)1")
    assert caught.value.field == "data"


_CSET82 = "!\"%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"


@given(
    body=st.text(alphabet="0123456789", min_size=13, max_size=13),
    lot=st.text(alphabet=_CSET82, min_size=1, max_size=20),
    expiry=st.dates(min_value=date(1990, 1, 1), max_value=date(2070, 12, 31)),
)
def test_forms_round_trip(body: str, lot: str, expiry: date) -> None:
    gtin = body + str(gtin_check_digit(body))
    yymmdd = expiry.strftime("%y%m%d")
    parsed = parse(f"(01){gtin}(17){yymmdd}(10){lot.replace('(', chr(92) + '(')}", today=TODAY)
    assert (parsed.gtin, parsed.lot, parsed.expiry) == (gtin, lot, expiry)
    again = parse(parsed.element_string, today=TODAY)
    assert again.elements == parsed.elements
    link = parsed.digital_link()
    assert link is not None
    assert parse(link, today=TODAY).hri == f"(01){gtin}(10){lot.replace('(', chr(92) + '(')}(17){yymmdd}"
    assert parse(parsed.hri, today=TODAY).elements == parsed.elements


def test_lots_and_products_named_by_any_gs1_form() -> None:
    assert identify_lot(f"https://id.gs1.org/01/{GTIN}/10/A%2F1") == (GTIN, "A/1")
    assert identify_lot(f"]d201{GTIN}10A1") == (GTIN, "A1")
    assert identify_product("9506000134352") == GTIN
    assert identify_product(f"(01){GTIN}(17)270531") == GTIN
    with pytest.raises(GS1Error, match="names no lot"):
        identify_lot(f"(01){GTIN}")
    with pytest.raises(GS1Error, match="names no product"):
        identify_product("(00)106141412345678908")
