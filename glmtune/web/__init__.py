"""`glmtune web`: the whole path (data, train, export, chat) in a browser, with jobs that outlive the page."""
