"""Development parts: the Hub-compatible test hub, test models and the demo."""
