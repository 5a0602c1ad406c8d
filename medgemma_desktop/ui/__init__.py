"""The window: Qt widgets over the Qt-free core (and the session layer); nothing below imports from here."""
