"""Shared frame for every page: the page registry, presentation mode, error display, settings.

Pages stay thin: widgets, caching and plots. All computation lives in :mod:`pumamed`.
"""

from __future__ import annotations

import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from pumamed import config
from pumamed.errors import PumaMedError

ROOT = Path(__file__).resolve().parent.parent
PRESENTATION_KEY = "presentation_mode"


@dataclass(frozen=True)
class PageSpec:
    section: str
    file: str  # relative to the project root
    title: str
    icon: str
    url_path: str
    default: bool = False


# The router (app.py), the AppTest suite and the browser test all read this list, so a page
# added here is served and tested without touching anything else.
PAGES: tuple[PageSpec, ...] = (
    PageSpec("Overview", "views/home.py", "Home", ":material/home:", "home", default=True),
    PageSpec("Imaging", "views/image_explorer.py", "Image explorer", ":material/image_search:", "image_explorer"),
    PageSpec("Imaging", "views/explain_audit.py", "Explain & audit", ":material/policy:", "explain_audit"),
    PageSpec("Public health", "views/epi_map.py", "Municipal map", ":material/map:", "municipal_map"),
    PageSpec("Public health", "views/epi_factors.py", "Socioeconomic factors", ":material/analytics:", "socioeconomic_factors"),
    PageSpec("Public health", "views/epi_pollutants.py", "Air pollutants", ":material/air:", "air_pollutants"),
    PageSpec("Public health", "views/epi_models.py", "Diabetes models", ":material/query_stats:", "diabetes_models"),
)


def available_pages() -> list[PageSpec]:
    """Registered pages whose file exists (so a partial checkout still serves what it has)."""
    return [p for p in PAGES if (ROOT / p.file).is_file()]


# ---------------------------------------------------------------- presentation mode
def is_presentation() -> bool:
    return bool(st.session_state.get(PRESENTATION_KEY, False))


def apply_presentation_style() -> None:
    """Larger fonts, figures that fit one 1920x1080 screen, and no sidebar, for talks.

    The selectors name the element that holds the text: a metric's value is a markdown paragraph
    inside ``stMetricValue``, so the general paragraph rule would otherwise shrink it below its
    label. The sidebar (navigation and the mode switch) starts collapsed in presentation mode
    (see ``sidebar_state`` in app.py); its chevron opens it again."""
    if not is_presentation():
        return
    st.html(
        """
        <style>
        [data-testid="stMain"] [data-testid="stMarkdownContainer"] p,
        [data-testid="stMain"] [data-testid="stMarkdownContainer"] li,
        [data-testid="stMain"] [data-testid="stCaptionContainer"] { font-size: 1.3rem; }
        [data-testid="stMain"] h1 { font-size: 3.2rem; padding-top: 0.5rem; }
        [data-testid="stMain"] h2 { font-size: 2.4rem; }
        [data-testid="stMain"] h3 { font-size: 1.9rem; }
        [data-testid="stMain"] [data-testid="stMetricValue"],
        [data-testid="stMain"] [data-testid="stMetricValue"] [data-testid="stMarkdownContainer"] p,
        [data-testid="stMain"] [data-testid="stMetricValue"] div {
            font-size: 3.4rem; line-height: 1.15; }
        [data-testid="stMain"] [data-testid="stMetricLabel"] [data-testid="stMarkdownContainer"] p {
            font-size: 1.3rem; }
        [data-testid="stMainBlockContainer"] { max-width: 96vw; padding-top: 4rem; padding-bottom: 2rem; }
        /* Streamlit's chart theme pins plotly's text at 12 px: readable from the back of a room. */
        [data-testid="stPlotlyChart"] .xtick text, [data-testid="stPlotlyChart"] .ytick text,
        [data-testid="stPlotlyChart"] .cbaxis text {
            font-size: 15px !important; }
        [data-testid="stPlotlyChart"] .g-xtitle text, [data-testid="stPlotlyChart"] .g-ytitle text,
        [data-testid="stPlotlyChart"] .annotation-text { font-size: 17px !important; }
        [data-testid="stPlotlyChart"] .gtitle { font-size: 20px !important; }
        </style>
        """
    )


def sidebar_state() -> str:
    """``initial_sidebar_state`` for ``st.set_page_config``: collapsed in presentation mode."""
    return "collapsed" if is_presentation() else "auto"


#: Tallest figure in presentation mode: a 1080-pixel screen less the browser's bars, the page
#: title and a row of metrics, so that a page's key chart fits on one screen.
PRESENTATION_MAX_FIGURE_HEIGHT = 580


def figure_height(base: int = 420) -> int:
    """Figure height for the current mode: 30 % taller in presentation mode, at most
    :data:`PRESENTATION_MAX_FIGURE_HEIGHT`."""
    return min(int(base * 1.3), PRESENTATION_MAX_FIGURE_HEIGHT) if is_presentation() else base


def style_figure(fig, base_height: int = 420):
    """Apply the mode's height and font sizes to a plotly figure and return it."""
    font = 18 if is_presentation() else 13
    fig.update_layout(height=figure_height(base_height), font=dict(size=font),
                      margin=dict(l=10, r=10, t=50, b=10))
    return fig


@contextmanager
def controls(label: str = "Controls"):
    """Container for a page's controls: in the sidebar normally, folded away in presentation mode."""
    if is_presentation():
        with st.expander(label, expanded=False):
            yield
    else:
        with st.sidebar:
            st.subheader(label)
            yield


# ---------------------------------------------------------------- errors
def show_error(exc: BaseException, context: str = "") -> None:
    """Show an error as a message, never as a traceback box.

    User errors (:class:`PumaMedError`) show their message. Unexpected errors show a one-line
    summary, with the traceback folded into an expander for bug reports.
    """
    prefix = f"{context}: " if context else ""
    if isinstance(exc, PumaMedError):
        st.error(f"{prefix}{exc}", icon=":material/error:")
        return
    st.error(f"{prefix}unexpected {type(exc).__name__}: {exc}", icon=":material/bug_report:")
    with st.expander("Technical details"):
        st.code("".join(traceback.format_exception(exc)), language="text")


@contextmanager
def guarded(context: str = ""):
    """``with guarded("Loading model"): ...`` shows any failure inside as a message."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001
        # st.stop() / st.rerun() are control flow, not failures.
        if type(exc).__name__ in {"StopException", "RerunException", "ScriptControlException"}:
            raise
        show_error(exc, context)


# ---------------------------------------------------------------- settings
def data_dir() -> Path:
    return config.data_dir()


def models_dir() -> Path:
    return config.models_dir()


def demo_data_banner() -> None:
    """A banner on every page while the pages read the demo pack instead of full data."""
    if not config.is_demo_data():
        return
    from pumamed.demopack import pack_summary

    st.info(f"**{pack_summary()}**: set `PUMAMED_DATA_DIR` for the full data "
            "(see the README's *First run* section).", icon=":material/science:")


def missing_data_message(what: str, relative_path: str) -> None:
    """Say which file is missing and how to provide it."""
    st.info(
        f"**{what}** was not found at `{data_dir() / relative_path}`.\n\n"
        f"Set `PUMAMED_DATA_DIR` to a folder holding `{relative_path}` "
        "(see the README's *Data directory* section), then reload.",
        icon=":material/folder_off:",
    )


# ----------------------------------------------------------------------------- one model cache
def checkpoint_stamp(path: str) -> float:
    """Modification time of a checkpoint's weights, config and trust files: a retrained or
    recalibrated model gets a new cache key."""
    from pumamed.catalog import CONFIG_FILE, TRUST_FILE, WEIGHTS_FILE

    folder = Path(path)
    stamps = [(folder / f).stat().st_mtime for f in (WEIGHTS_FILE, CONFIG_FILE, TRUST_FILE) if (folder / f).exists()]
    return max(stamps, default=0.0)


@st.cache_resource(max_entries=4, show_spinner="Loading the model…")
def cached_session(path: str, stamp: float):
    """One :class:`pumamed.explain.session.ExplorerSession` per checkpoint and modification time,
    shared by every imaging page, rerun and tab (pass :func:`checkpoint_stamp` as ``stamp``)."""
    from pumamed.explain.session import load_session

    return load_session(path)


def model_session(path: str):
    """The cached session of the checkpoint at ``path``, as it is on disk now."""
    return cached_session(path, checkpoint_stamp(path))



def modality_dataset_options(choice, key_prefix: str, help_text: str) -> list[str]:
    """Dataset options for a model (``choice``: :func:`pumamed.imaging.matching.datasets_for_model`):
    its own modality's; the others only after ticking *Show datasets of other modalities*. A
    dataset of another modality that a previous model left selected is dropped, never kept behind
    the user's back; with nothing of the model's modality present, a note says how to go on."""
    from pumamed.imaging.matching import modality_name

    show_all = bool(choice.others) and st.checkbox("Show datasets of other modalities",
                                                   key=f"{key_prefix}_show_all_datasets", help=help_text)
    options = choice.options(show_all)
    if st.session_state.get(f"{key_prefix}_dataset") not in options:
        st.session_state.pop(f"{key_prefix}_dataset", None)
    if not options and choice.others:
        st.info(f"No {modality_name(choice.modality)} dataset in the data directory; tick *Show datasets of "
                "other modalities* to use another one.", icon=":material/info:")
    return options
