from .map_hungarian_assigner import MapHungarianAssigner
from .match_costs import OrderedPtsL1Cost

__all__ = ['MapHungarianAssigner', 'OrderedPtsL1Cost']
