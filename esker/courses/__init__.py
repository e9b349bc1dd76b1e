"""Courses: the model, reservations and pre-warming (pure), content delivery, dataset ACLs, seats, roles and the esker-courses service."""
