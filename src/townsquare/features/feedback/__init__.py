"""Members' feedback on what townsquare generated for them, and training exports of it."""
