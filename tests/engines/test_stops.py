"""Stop sequences over streamed text."""

from __future__ import annotations

from lmfoundry.engines.stops import StopScanner


def stream(stops: list[str], pieces: list[str]) -> tuple[list[str], bool]:
    scanner = StopScanner(stops)
    out: list[str] = []
    for i, piece in enumerate(pieces):
        text, hit = scanner.scan(piece, final=i == len(pieces) - 1)
        out.append(text)
        if hit:
            return out, True
    return out, False


def test_stop_spanning_pieces_is_never_emitted() -> None:
    assert stream(["END"], ["abc E", "N", "D more"]) == (["abc ", "", ""], True)


def test_held_text_is_released_when_it_is_not_a_stop() -> None:
    assert stream(["END"], ["abc E", "N", "x"]) == (["abc ", "", "ENx"], False)
    assert stream(["END"], ["abc E", "N"]) == (["abc ", "EN"], False)  # final releases it


def test_earliest_of_several_stops_wins() -> None:
    assert stream(["lo", "hel"], ["say hello"]) == (["say "], True)
    assert stream([], ["a", "b"]) == (["a", "b"], False)
