from .map_hungarian_assigner import MapHungarianAssigner, solve_assignments
from .match_costs import OrderedPtsL1Cost

__all__ = ['MapHungarianAssigner', 'OrderedPtsL1Cost', 'solve_assignments']
