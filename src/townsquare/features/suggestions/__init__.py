"""Comment suggestions and creators' suggested replies in their own style."""
