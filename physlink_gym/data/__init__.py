"""Trajectory containers in the Dreamer entry format and their safe on-disk format.

Example:
    >>> from physlink_gym.data import Trajectories, record_trajectories
    >>> Trajectories.__name__, record_trajectories.__name__
    ('Trajectories', 'record_trajectories')
"""

from physlink_gym.data.trajectories import ENTRY_FIELDS, Trajectories, record_trajectories

__all__ = ["ENTRY_FIELDS", "Trajectories", "record_trajectories"]
