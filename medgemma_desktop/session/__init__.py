"""The session layer: a conversation's life for every front end (window, `ask`, batch, the API), without Qt.

- `backend`: what the session needs from whatever generates (`Backend`; `core.engine.Engine` is one) and the
  `PromptCounter` a UI thread counts with.
- `inputs`: paths -> `InputItem`s (pictures, DICOM images, series), grouped by series however they arrive.
- `question`: preparing a question for its task mode, and the one budget rule `check_fits`.
- `conversation`: `Session`, its exchanges and turns, ask / regenerate / edit, `Session.reopen`.
- `recording`: `AnswerJob`, run on the generating thread, storing the answer as it streams.

It may use core only; the front ends use it. See docs/DESIGN.md.
"""
