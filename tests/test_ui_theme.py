"""Colours and text size: every text colour of both themes meets WCAG AA (4.5:1), computed from the palette and
the style sheets the app applies; the text-size setting scales the app's font."""

from __future__ import annotations

import re

import pytest
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

from medgemma_desktop.ui.demo_banner import STYLE as BANNER_STYLE
from medgemma_desktop.ui.theme import apply_theme

Role = QPalette.ColorRole
# (text, background) pairs of palette roles that Qt draws text with; disabled text is exempt in WCAG.
TEXT_ON = [(Role.WindowText, Role.Window), (Role.Text, Role.Base), (Role.Text, Role.AlternateBase),
           (Role.ButtonText, Role.Button), (Role.ToolTipText, Role.ToolTipBase),
           (Role.HighlightedText, Role.Highlight), (Role.PlaceholderText, Role.Base), (Role.Link, Role.Base),
           (Role.LinkVisited, Role.Base), (Role.WindowText, Role.Button)]


def luminance(colour: QColor) -> float:
    """WCAG 2 relative luminance."""
    def linear(channel: float) -> float:
        return channel / 12.92 if channel <= 0.04045 else ((channel + 0.055) / 1.055) ** 2.4
    return 0.2126 * linear(colour.redF()) + 0.7152 * linear(colour.greenF()) + 0.0722 * linear(colour.blueF())


def contrast(text: QColor, background: QColor) -> float:
    """WCAG contrast ratio; a translucent text colour is first blended over its background, as it is drawn."""
    alpha = text.alphaF()
    shown = QColor.fromRgbF(*(alpha * t + (1 - alpha) * b for t, b in
                              zip((text.redF(), text.greenF(), text.blueF()),
                                  (background.redF(), background.greenF(), background.blueF()), strict=True)))
    light, dark = sorted((luminance(shown), luminance(background)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def sheet_text_colours(sheet: str) -> dict[str, QColor]:
    """Each style-sheet rule's text colour, by selector."""
    return {selector.strip(): QColor(colour)
            for selector, body in re.findall(r"([^{}]+)\{([^}]*)\}", re.sub(r"/\*.*?\*/", "", sheet, flags=re.S))
            for colour in re.findall(r"(?<![-\w])color:\s*(#[0-9a-fA-F]{6})", body)}


@pytest.mark.parametrize("theme", ["light", "dark"])
def test_every_text_colour_meets_wcag_aa(qapp: QApplication, theme: str) -> None:
    apply_theme(qapp, theme)
    palette = qapp.palette()
    for group in (QPalette.ColorGroup.Active, QPalette.ColorGroup.Inactive):
        for text, background in TEXT_ON:
            ratio = contrast(palette.color(group, text), palette.color(group, background))
            assert ratio >= 4.5, f"{theme}: {text.name} on {background.name} is {ratio:.2f}:1"
    sheet = sheet_text_colours(qapp.styleSheet())
    assert set(sheet) == {"QLabel#errorLabel", "QLabel#disclaimer"}  # every colour the sheet sets is checked
    for selector, colour in sheet.items():  # these labels sit on the window (and dialogs) background
        for background in (palette.color(Role.Window), palette.color(Role.Base)):
            ratio = contrast(colour, background)
            assert ratio >= 4.5, f"{theme}: {selector} {colour.name()} on {background.name()} is {ratio:.2f}:1"
    apply_theme(qapp, "light")


def test_the_demo_banner_is_readable_in_any_theme() -> None:
    background = QColor(re.search(r"background:\s*(#[0-9a-fA-F]{6})", BANNER_STYLE).group(1))
    (text,) = sheet_text_colours(BANNER_STYLE).values()
    assert contrast(text, background) >= 4.5


def test_the_old_colours_fail_the_same_check() -> None:
    """The check itself: the dark theme's old error red and the old disclaimer orange were below AA."""
    assert contrast(QColor("#c62828"), QColor("#2b2b2b")) == pytest.approx(2.5, abs=0.05)
    assert contrast(QColor("#b26a00"), QColor("#efefef")) < 4.5
    assert contrast(QColor(0, 0, 0, 128), QColor("#ffffff")) < 4.5  # Fusion's translucent placeholder


def test_text_size_scales_the_app_font(qapp: QApplication) -> None:
    apply_theme(qapp, "light", 100)
    base = qapp.font().pointSizeF()
    apply_theme(qapp, "light", 150)
    assert qapp.font().pointSizeF() == pytest.approx(base * 1.5)
    apply_theme(qapp, "dark", 1000)  # out of range (a hand-edited file): the largest size offered
    assert qapp.font().pointSizeF() == pytest.approx(base * 2)
    apply_theme(qapp, "light", 100)
    assert qapp.font().pointSizeF() == pytest.approx(base)


def test_transcript_links_follow_the_theme(qtbot, qapp: QApplication) -> None:
    """Qt's Markdown reader colours links with the palette at reading time; after a theme switch they must
    still meet AA on the transcript's background (they were dark blue on dark grey)."""
    from PySide6.QtGui import QTextCursor

    from medgemma_desktop.core.engine import GenerationStats
    from medgemma_desktop.core.prompts import TaskMode
    from medgemma_desktop.session.question import prepare_question
    from medgemma_desktop.session.recording import Answer
    from medgemma_desktop.ui.chat import ChatPane

    apply_theme(qapp, "light")
    chat = ChatPane()
    qtbot.addWidget(chat)
    chat.show()
    job = chat.conversation.begin(prepare_question(TaskMode.FREE_CHAT, [], "Question"))
    chat.begin_answer(job.index, new_question=True)
    chat.conversation.finish(job, Answer("An answer.", "", GenerationStats(new_tokens=3)))
    chat.finish()
    for theme in ("dark", "light"):
        apply_theme(qapp, theme)
        qapp.processEvents()
        document = chat.transcript.document()
        found = document.find("Copy answer")
        assert not found.isNull() and found.charFormat().isAnchor()
        cursor = QTextCursor(found)
        colour = cursor.charFormat().foreground().color()
        background = chat.transcript.palette().color(Role.Base)
        assert contrast(colour, background) >= 4.5, f"{theme}: link {colour.name()} on {background.name()}"
