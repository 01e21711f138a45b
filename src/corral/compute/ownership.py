"""Which project a new VM, image or key pair goes into, and what a project may build from.

The rules, the same for ``corral create``, ``corral launch`` and the API:

* a new object goes into the project its caller names, or into ``default`` when none is
  named (what the CLI did before projects existed);
* a VM's disks may be cloned from an image of the VM's own project or of the project
  ``default``: the images of ``default`` are a public catalogue that every project shares
  (the reference guest, the distributions' cloud images); an image of another project does
  not exist for it (:class:`~corral.errors.NotFound`, as an image of no project);
* a launch installs a key pair of its own project only: a key pair grants SSH access to
  what it is installed in, so sharing one across projects would let the holders of one
  project's key into another project's instances.

Who may act in a project is not decided here: the CLI acts as the local administrator, and
the API checks its principal's membership before it calls the compute functions.
"""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.access.projects import PROJECT_NAME_PATTERN
from corral.errors import NotFound
from corral.store.models import DEFAULT_PROJECT, DEFAULT_PROJECT_ID, ProjectRow


def resolve_project(session: Session, name: str | None) -> ProjectRow:
    """The project ``name`` (``default`` when ``None``).

    :raise NotFound: there is no such project.
    """
    name = DEFAULT_PROJECT if name is None else name
    row = None
    if re.match(PROJECT_NAME_PATTERN, name):  # no other name can exist; keep it off SQL
        row = session.scalars(select(ProjectRow).where(ProjectRow.name == name)).first()
    if row is None:
        raise NotFound("project", name)
    return row


def image_usable(image_project_id: str, project_id: str) -> bool:
    """Whether a VM of project ``project_id`` may be cloned from an image of
    ``image_project_id``: its own project's images and the shared ones of ``default``."""
    return image_project_id in (project_id, DEFAULT_PROJECT_ID)


def project_name(session: Session, project_id: str) -> str:
    """The name of the project ``project_id`` (its id if it has none, which a foreign key
    prevents)."""
    name = session.scalars(select(ProjectRow.name).where(ProjectRow.id == project_id)).first()
    return project_id if name is None else name


def project_names(session: Session) -> dict[str, str]:
    """Every project's name by its id."""
    return {
        str(id_): str(name) for id_, name in session.execute(select(ProjectRow.id, ProjectRow.name))
    }
