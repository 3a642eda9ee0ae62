"""Read models folded from events: run state, episodic and semantic memory."""
