"""GNU parallel's command-line form (``COMMAND ::: ARGS``): how it becomes job lines.

The expected strings come from GNU parallel 20221122 (``parallel -k --dry-run``) on the same
input; ``tests/test_cli.py`` compares the two programs directly where ``parallel`` is installed.
"""

from __future__ import annotations

import itertools
import re
import shlex
import subprocess
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import given

from async_executor._cli.jobs import SLOT_MARK, JobFileError, parse_jobs
from async_executor._cli.template import (
    CommandTemplate,
    InputSource,
    Replacements,
    TemplateError,
    TemplateParser,
    combinations,
    drop_blank,
    name_columns,
    parse_command_line,
    read_source_lines,
    sources_from_groups,
    tag_text,
    take_headers,
    template_jobs,
)


def _lines(words: list[str], *groups: tuple[str, list[str]], shell: bool = False) -> list[str]:
    sources = sources_from_groups(list(groups), lambda name: pytest.fail(f"no file expected: {name}"))
    template = CommandTemplate(tuple(words), shell=shell, sources=len(sources))
    return [job.text for job in template_jobs(template, sources, "<input>")]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # {} , {.} , {/} , {//} , {/.}  as GNU parallel prints them
        ("a", "echo a , a , a , . , a"),
        ("/a", "echo /a , /a , a , / , a"),
        ("a/b/", "echo a/b/ , a/b/ , '' , a , ''"),
        (".bashrc", "echo .bashrc , '' , .bashrc , . , ''"),
        ("a.", "echo a. , a , a. , . , a"),
        ("dir.d/file", "echo dir.d/file , dir.d/file , file , dir.d , file"),
        ("a/b.tar.gz", "echo a/b.tar.gz , a/b.tar , b.tar.gz , a , b.tar"),
        ("/", "echo / , / , '' , / , ''"),
        ("", "echo '' , '' , '' , . , ''"),
        ("x y.z", "echo 'x y.z' , 'x y' , 'x y.z' , . , 'x y'"),
        ("a//b", "echo a//b , a//b , b , a , b"),
    ],
)
def test_replacement_strings_as_gnu_parallel(value: str, expected: str) -> None:
    words = ["echo", "{}", ",", "{.}", ",", "{/}", ",", "{//}", ",", "{/.}"]
    assert _lines(words, (":::", [value])) == [expected]


def test_sources_combine_first_slowest_and_linked_ones_pair_up_to_the_shortest() -> None:
    assert _lines(["echo"], (":::", ["A", "B"]), (":::", ["1", "2"])) == [
        "echo A 1",
        "echo A 2",
        "echo B 1",
        "echo B 2",
    ]
    assert _lines(["echo"], (":::", ["A", "B", "C"]), (":::+", ["1", "2"])) == ["echo A 1", "echo B 2"]
    assert _lines(["echo"], (":::", ["A", "B"]), (":::+", ["1", "2"]), (":::", ["x", "y"])) == [
        "echo A 1 x",
        "echo A 1 y",
        "echo B 2 x",
        "echo B 2 y",
    ]
    assert _lines(["echo", "{2}-{1}"], (":::", ["A", "B"]), (":::", ["1", "2"])) == [
        "echo 1-A",
        "echo 2-A",
        "echo 1-B",
        "echo 2-B",
    ]


def test_an_empty_source_gives_no_jobs() -> None:
    assert _lines(["echo"], (":::", [])) == []
    assert _lines(["echo"], (":::", ["a"]), (":::", [])) == []


def test_values_are_appended_unless_a_replacement_string_is_used() -> None:
    assert _lines(["gzip", "-9"], (":::", ["my file", "it's"])) == [
        "gzip -9 'my file'",
        "gzip -9 'it'\"'\"'s'",
    ]
    assert _lines(["echo", "{#}"], (":::", ["a", "b"])) == [
        "echo 1",
        "echo 2",
    ]  # {#} counts: nothing appended
    assert _lines(["echo", "x{}y"], (":::", ["a b"]), (":::", ["c"])) == ["echo x'a b' cy"]
    assert _lines(["echo", "{1.}", "{1/}", "{2}"], (":::", ["d/a.b"]), (":::", ["e"])) == ["echo d/a a.b e"]


def test_one_word_commands_are_split_like_a_job_line() -> None:
    """GNU parallel joins the command's words into one line: ``'gzip -9 {}'`` is three words."""
    template = CommandTemplate(("gzip -9 {}",))
    job = template.job(("my file",), 1, 1, "<input>")
    assert job is not None and job.argv == ("gzip", "-9", "my file")


def test_without_a_command_each_value_is_a_job_line() -> None:
    template = CommandTemplate((), sources=1)
    sources = [InputSource(":::", ("echo a", "", "  # note", "sh -c 'exit 3'"))]
    jobs = template_jobs(template, sources, "<input>")
    assert [(j.seq, j.line, j.argv) for j in jobs] == [
        (1, 1, ("echo", "a")),
        (2, 4, ("sh", "-c", "exit 3")),
    ]
    with pytest.raises(JobFileError, match=r"<input>, input 1: No closing quotation"):
        template_jobs(template, [InputSource(":::", ("echo 'a",))], "<input>")


@given(st.text().filter(lambda v: "\x00" not in v))
def test_any_value_is_exactly_one_word(value: str) -> None:
    job = CommandTemplate(("printf", "%s", "{}", "{/}")).job((value,), 1, 1, "<input>")
    assert job is not None
    assert job.argv == ("printf", "%s", value, value.rpartition("/")[2])


@pytest.mark.parametrize("value", ["a b", "it's", "$(touch pwned)", "a;b", "'\"\\", "#x", "", "*"])
def test_with_a_shell_a_value_is_still_one_word(value: str, tmp_path: Path) -> None:
    job = CommandTemplate(("printf", "'<%s>'", "{}"), shell=True).job((value,), 1, 1, "<input>")
    assert job is not None
    assert job.argv[:2] == ("/bin/sh", "-c")
    out = subprocess.run(job.argv, capture_output=True, text=True, check=True, cwd=str(tmp_path)).stdout
    assert out == f"<{value}>"


def test_a_value_with_nul_is_refused() -> None:
    with pytest.raises(JobFileError, match="NUL"):
        CommandTemplate(("echo",)).job(("a\x00b",), 1, 7, "<input>")


@pytest.mark.parametrize(
    ("words", "sources", "message"),
    [
        (("echo", "{3}"), 2, r"\{3\} names input source 3, but there is 2 input sources"),
        (("echo", "{0.}"), 1, r"\{0\.\}: input sources and columns are numbered from 1"),
        (("echo", '"{}'), 1, "cannot be split by shell rules: No closing quotation"),
    ],
)
def test_bad_templates_are_refused(words: tuple[str, ...], sources: int, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        CommandTemplate(words, sources=sources)


def test_bad_sources_are_refused() -> None:
    def never(name: str) -> tuple[str, ...]:
        raise AssertionError(name)

    with pytest.raises(TemplateError, match=r":::\+ links to the input source before it"):
        sources_from_groups([(":::+", ["a"])], never)
    with pytest.raises(TemplateError, match=r":::: needs at least one file"):
        sources_from_groups([(":::", ["a"]), ("::::", [])], never)
    with pytest.raises(TemplateError, match="standard input"):
        sources_from_groups([("::::", ["-", "-"])], lambda name: ())


def test_file_sources_one_per_file_linked_only_first() -> None:
    read = {"f": ("1", "2"), "g": ("x",)}
    sources = sources_from_groups([(":::", ["a", "b"]), ("::::+", ["f", "g"])], read.__getitem__)
    assert [(s.name, s.values, s.linked) for s in sources] == [
        (":::", ("a", "b"), False),
        ("f", ("1", "2"), True),
        ("g", ("x",), False),
    ]
    assert list(combinations(sources)) == [("a", "1", "x"), ("b", "2", "x")]


def test_command_line_split_and_file_lines() -> None:
    assert parse_command_line(["jobs.txt"]) is None
    assert parse_command_line(["echo", "-n", "{}", ":::", "a", "::::", "f", ":::+", "b"]) == (
        ["echo", "-n", "{}"],
        [(":::", ["a"]), ("::::", ["f"]), (":::+", ["b"])],
    )
    assert parse_command_line([":::", "echo a"]) == ([], [(":::", ["echo a"])])
    assert read_source_lines(b"a\n\nb c\r\nlast") == ("a", "", "b c", "last")


def test_streamed_lines_number_jobs_like_their_lines() -> None:
    parser = TemplateParser(CommandTemplate(("wc", "-c", "{}")))
    jobs = [parser.feed(line) for line in ["a.txt", "my file", ""]]
    assert [(j.seq, j.line, j.text) for j in jobs if j is not None] == [
        (1, 1, "wc -c a.txt"),
        (2, 2, "wc -c 'my file'"),
        (3, 3, "wc -c ''"),
    ]
    assert shlex.split(jobs[1].text if jobs[1] else "") == ["wc", "-c", "my file"]


def test_colsep_splits_values_into_columns_as_gnu_parallel() -> None:
    comma = re.compile(",")
    template = CommandTemplate(("echo", "{2}-{1}", "{3/}"), sources=1, colsep=comma)
    jobs = [template.job((row,), n, n, "<input>") for n, row in enumerate(["a,b,x/y", "c"], start=1)]
    assert [j.argv for j in jobs if j is not None] == [
        ("echo", "b-a", "y"),
        ("echo", "-c"),
    ]  # a missing column: nothing, not an empty argument (GNU parallel: "echo -c ")
    both = CommandTemplate(("echo",), sources=2, colsep=comma).job(("a,b", "x,y"), 1, 1, "<input>")
    assert both is not None and both.argv == ("echo", "a", "b", "x", "y") and both.tag == "a b x y"


@pytest.mark.parametrize("shell", [False, True])
def test_the_slot_is_marked_where_the_command_has_it_only(shell: bool) -> None:
    template = CommandTemplate(("env", "GPU={%}", "run", "{}"), shell=shell)
    job = template.job(("{%} x",), 1, 1, "<input>")  # a value that looks like {%} stays itself
    assert job is not None and job.slotted
    assert job.text == "env GPU={%} run '{%} x'"
    if shell:
        assert job.argv == ("/bin/sh", "-c", f"env GPU={SLOT_MARK} run '{{%}} x'")
    else:
        assert job.argv == ("env", f"GPU={SLOT_MARK}", "run", "{%} x")
    plain = CommandTemplate(("echo", "{}")).job(("{%}",), 1, 1, "<input>")
    assert plain is not None and not plain.slotted and plain.argv == ("echo", "{%}")
    only_slot = CommandTemplate(("echo", "{%}")).job(("a",), 1, 1, "<input>")
    assert only_slot is not None and only_slot.argv == ("echo", SLOT_MARK)  # {%} alone: nothing appended


def test_null_separated_items_may_hold_newlines() -> None:
    assert read_source_lines(b"a b\x00c\nd\x00", delimiter="\x00") == ("a b", "c\nd")
    assert read_source_lines(b"a\x00b", delimiter="\x00") == ("a", "b")  # the last NUL is optional
    assert read_source_lines(b"", delimiter="\x00") == ()
    assert read_source_lines(b"a::b\n::", delimiter="::") == ("a", "b\n")  # -d: newlines are kept


def test_tagstrings_are_filled_unquoted() -> None:
    """``--tagstring``: the same replacement strings as a command, but the values go in as they
    are (a tag is text); ``{}`` of a job-file line is the line; a missing source is nothing."""
    template = CommandTemplate(("echo",), sources=2)
    job = template.job(("it's a/b.c", "$x"), 7, 7, "<input>")
    assert job is not None
    assert tag_text("{}|{1/.}|{2}|{3}|{#}|{%}", job, "4") == "it's a/b.c $x|b|$x||7|4"
    line = parse_jobs(["echo 'x y'"])[0]
    assert tag_text("[{}] {1} {2}", line) == "[echo 'x y'] echo 'x y' "


def test_headers_name_sources_and_columns() -> None:
    """``--header :``: first values name the sources; with ``--colsep`` the first line names
    columns, numbered on across sources as ``{N}`` counts them."""
    sources = [InputSource(":::", ("foo", "a")), InputSource("f", ("x,y", "1,2"))]
    rest, names = take_headers(sources, re.compile(","))
    assert [s.values for s in rest] == [("a",), ("1,2",)] and names == {"foo": 1, "x": 2, "y": 3}
    assert name_columns("{foo}/{y.} {x/} {xy} {} {2}", names) == "{1}/{3.} {2/} {xy} {} {2}"
    assert name_columns("{a.b}", {"a.b": 1, "a": 2}) == "{1}"  # the longest name first
    with pytest.raises(TemplateError, match="is empty"):
        take_headers([InputSource(":::", ())], None)


@given(
    values=st.lists(st.text(alphabet="ab c'.", min_size=1, max_size=8), min_size=1, max_size=40),
    slots=st.integers(0, 5),
    limit=st.integers(60, 200),
    context=st.booleans(),
)
def test_packed_jobs_hold_every_value_once_in_order_within_the_line_limit(
    values: list[str], slots: int, limit: int, context: bool
) -> None:
    """``-m`` / ``-X`` / ``--xargs``: the jobs' values, in order, are the input's; no job line
    is longer than the limit (each value alone fits here); with slots, no more jobs' worth of
    values than an even spread gives to each."""
    template = CommandTemplate(("echo", "pre{}post", "{.}"), context=context)
    source = [InputSource(":::", tuple(values))]
    jobs = template_jobs(template, source, "<input>", pack=slots, max_chars=limit)
    assert [value for job in jobs for value in job.values] == values
    assert all(len(job.text) <= limit for job in jobs if len(job.values) > 1)  # one alone may not fit
    if slots:
        assert all(len(job.values) <= -(-len(values) // slots) for job in jobs)
    else:  # as many as fit: the next job's first value would have made the line too long
        for job, following in itertools.pairwise(jobs):
            assert len(template.fill((*job.values, following.values[0]), job.seq)) > limit
    words = [shlex.split(job.text) for job in jobs]
    if context:  # each value's word repeated: pre{}post, then {.}, per value
        assert all(len(w) == 1 + 2 * len(job.values) for w, job in zip(words, jobs, strict=True))


_DEFAULTS = {
    "value": "{}",
    "noext": "{.}",
    "base": "{/}",
    "dir": "{//}",
    "basenoext": "{/.}",
    "seq": "{#}",
    "slot": "{%}",
}


@given(
    tokens=st.lists(st.sampled_from([*_DEFAULTS, "word"]), min_size=1, max_size=8),
    chosen=st.lists(
        st.text(alphabet="@%,XY+{}", min_size=1, max_size=3),
        min_size=len(_DEFAULTS),
        max_size=len(_DEFAULTS),
        unique=True,
    ),
    value=st.sampled_from(["d/a.b", "a", "x y.z", "/r"]),
)
def test_changed_replacement_strings_fill_as_the_defaults_do(
    tokens: list[str], chosen: list[str], value: str
) -> None:
    """``-I``, ``--er``, ...: a command written with other replacement strings makes the same
    job as with GNU parallel's own: each word is one string, even when another string is a
    prefix or part of it (the longer ones are tried first)."""
    custom = dict(zip(_DEFAULTS, chosen, strict=True))
    defaults = CommandTemplate(tuple(_DEFAULTS.get(t, t) for t in tokens))
    changed = CommandTemplate(tuple(custom.get(t, t) for t in tokens), strings=Replacements(**custom))
    assert changed.fill((value,), 3) == defaults.fill((value,), 3)


def test_bad_replacement_strings_are_refused() -> None:
    with pytest.raises(TemplateError, match="cannot be empty"):
        Replacements(value="")
    with pytest.raises(TemplateError, match=r"both -I \(\{\}\) and --er"):
        Replacements(value="@", noext="@")
    with pytest.raises(TemplateError, match="NUL"):
        Replacements(slot="\x00")


def test_a_changed_slot_string_is_the_slot_and_the_old_one_text() -> None:
    strings = Replacements(slot="SL", seq="SQ")
    job = CommandTemplate(("echo", "SL", "{%}", "SQ", "{#}"), strings=strings).job(("a",), 4, 4, "<input>")
    assert job is not None and job.slotted
    assert job.argv == ("echo", SLOT_MARK, "{%}", "4", "{#}")  # a replacement string: nothing appended
    assert job.text == "echo {%} {%} 4 {#}"  # the text shows the slot as {%}, as it always does
    tag = tag_text("SL:SQ:{%}", job, "2", strings)
    assert tag == "2:4:{%}"


@pytest.mark.parametrize(
    ("trim", "colsep", "expected"),
    [
        (None, None, ("echo", " a ", "b")),
        ("lr", None, ("echo", "a", "b")),
        ("l", None, ("echo", "a ", "b")),
        ("r", None, ("echo", " a", "b")),
        (None, ",", ("echo", "a", "b", "c")),  # --colsep: lr, each column
        ("n", ",", ("echo", " a ", "b", " c")),
    ],
)
def test_trim_strips_each_value_or_column(
    trim: str | None, colsep: str | None, expected: tuple[str, ...]
) -> None:
    pattern = re.compile(colsep) if colsep else None
    values = (" a ,b, c",) if colsep else (" a ", "b")
    job = CommandTemplate(("echo",), sources=len(values), colsep=pattern, trim=trim).job(
        values, 1, 1, "<input>"
    )
    assert job is not None and job.argv == expected
    with pytest.raises(TemplateError, match="--trim 'x'"):
        CommandTemplate(("echo",), trim="x")


def test_link_wraps_the_shorter_sources_and_blank_values_can_be_dropped() -> None:
    sources = [
        InputSource(":::", ("a", "b", "c")),
        InputSource(":::", ("1",)),
        InputSource(":::", ("x", "y")),
    ]
    assert list(combinations(sources, link=True)) == [("a", "1", "x"), ("b", "1", "y"), ("c", "1", "x")]
    assert list(combinations([*sources, InputSource(":::", ())], link=True)) == []
    kept = drop_blank([InputSource(":::", ("a", "", " \t", "b ")), InputSource("-", None)])
    assert kept == [InputSource(":::", ("a", "b ")), InputSource("-", None)]
    parser = TemplateParser(CommandTemplate(("echo",)), skip_blank=True)
    assert [parser.feed(line) for line in ("", "  ")] == [None, None]
    job = parser.feed("x")
    assert job is not None and job.line == 3 and job.seq == 1  # the line number counts the skipped
