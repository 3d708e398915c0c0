"""What is where: the chunk index, objects, versions, manifests and uploads. SQL, never files."""
