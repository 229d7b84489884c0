"""The Med-Art web app's UI (Gradio): one module per tab in tabs/, the shared pieces (roles, error
guard, synthetic marking) in shared.py, background work in jobs.py, the Blocks assembled in
interface.py. app.py beside this package is the entry point. Nothing here is imported by
medart_core, and importing this package starts nothing.
"""
