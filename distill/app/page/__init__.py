"""The page's parts: one module per tab (layout, handlers and their wiring), the run view shared by the
training, codes and generate tabs, and the settings form. `distill.app.ui.build_ui` composes them."""
