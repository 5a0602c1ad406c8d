"""The session layer: a conversation's life for every front end (window, `ask`, batch, the API), without Qt.

It may use core only; the front ends use it. See docs/DESIGN.md.
"""
