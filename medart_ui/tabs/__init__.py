"""One module per tab. Each has TITLE, ID, ROLES (who sees it and may call its callbacks) and
build(app) -> Fill, the callback that fills the tab for the signed-in user at page load. No tab
imports another; what two tabs share lives in medart_ui.shared."""
