"""Scanner: polls the quote board and pushes net-of-fee opportunities to exec."""
