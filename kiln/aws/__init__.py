"""Wire protocols shared by every front door: AWS error shapes, ARNs, JSON responses."""

from kiln.aws.errors import AwsError

__all__ = ["AwsError"]
