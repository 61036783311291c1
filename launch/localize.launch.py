"""Launch the ImPosing localizer (lifecycle, brought to active here), the motion filter and RViz.

    ros2 launch imposing_ros localize.launch.py model:=/path/to/model.pt \
        image_topic:=/camera/image_raw use_filter:=true rviz:=true

The node set, its parameter files and the defaults of the arguments come from
``imposing_ros.nodes.node_set``, which ``imposing-ros run`` (no ROS install) reads too.
"""

from launch import LaunchDescription  # noqa: I001 (ruff takes launch/ for first-party)
from launch.actions import (
    DeclareLaunchArgument,
    EmitEvent,
    SetEnvironmentVariable,
    LogInfo,
    OpaqueFunction,
    RegisterEventHandler,
)
from launch.conditions import IfCondition
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

from imposing_ros.nodes import node_set


def _nodes(context):
    """Build the node actions from the resolved argument values (shared plan of node_set)."""
    values = {arg.name: LaunchConfiguration(arg.name).perform(context)
              for arg in node_set.LAUNCH_ARGUMENTS}
    launches = node_set.plan(values['params_file'], values['model'], values['image_topic'],
                             values['use_filter'], values['use_sim_time'], values['log_level'],
                             values['namespace'])
    actions = []
    for launch in launches:
        spec = launch.spec
        common = dict(
            package=node_set.PACKAGE, executable=spec.executable, name=spec.name,
            namespace=launch.namespace, output='screen',
            parameters=[str(path) for path in launch.param_files] + [launch.overrides],
            remappings=list(spec.remappings),
            ros_arguments=['--log-level', launch.log_level])
        if not spec.lifecycle:
            actions.append(Node(**common))
            continue
        node = LifecycleNode(**common)
        # unconfigured -> configure at start; inactive -> activate when configure succeeded.
        configure = EmitEvent(event=ChangeState(
            lifecycle_node_matcher=matches_action(node),
            transition_id=Transition.TRANSITION_CONFIGURE))
        activate = RegisterEventHandler(OnStateTransition(
            target_lifecycle_node=node, goal_state='inactive',
            entities=[
                LogInfo(msg=f'{spec.name} configured, activating'),
                EmitEvent(event=ChangeState(
                    lifecycle_node_matcher=matches_action(node),
                    transition_id=Transition.TRANSITION_ACTIVATE)),
            ]))
        actions += [activate, node, configure]
    return actions


def generate_launch_description() -> LaunchDescription:
    """Arguments of node_set.LAUNCH_ARGUMENTS, the node set, and RViz on request."""
    arguments = [DeclareLaunchArgument(arg.name, default_value=arg.default,
                                       description=arg.description,
                                       **({'choices': list(arg.choices)} if arg.choices else {}))
                 for arg in node_set.LAUNCH_ARGUMENTS]
    rviz = Node(
        package='rviz2', executable='rviz2', name='rviz2', output='screen',
        arguments=['-d', str(node_set.config_file(node_set.RVIZ_CONFIG))],
        parameters=[{'use_sim_time': LaunchConfiguration('use_sim_time')}],
        condition=IfCondition(LaunchConfiguration('rviz')))
    # The packaged Fast DDS profile for raw camera images, unless one is set (node_set).
    environment = [SetEnvironmentVariable(name, value)
                   for name, value in node_set.dds_environment().items()]
    return LaunchDescription(arguments + environment + [OpaqueFunction(function=_nodes), rviz])
