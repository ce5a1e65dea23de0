// What the function app's managed identity may do, each grant on the narrowest scope, and what
// the Azure ML workspace's identity needs on the container registry. docs/azure.md lists
// every assignment with the documentation it follows; tests/azure/test_deployment_files.py
// checks that list against this file.

@description('Principal (object) id of the function app\'s system-assigned identity.')
param principalId string

param serviceBusName string
param requestsQueueName string = 'training-requests'
param completedTopicName string = 'training-completed'
param notifierSubscriptionName string = 'notifier'
param storageName string
param workspaceName string
param keyVaultName string
param appInsightsName string
param vnetName string
param amlSubnetName string = 'aml'
param amlNsgName string

@description('Let the app create clusters a request names (AzureML Compute Operator + join the aml subnet; read on the VNet is always granted).')
param allowClusterCreation bool = true

@description('Container registry of the workspace (modules/registry.bicep).')
param registryName string

@description('Principal id of the Azure ML workspace\'s system-assigned identity (pushes the environment image).')
param workspacePrincipalId string

var role = {
  serviceBusDataSender: '69a216fc-b8fb-44d8-bc22-1f3c2cd27a39'
  serviceBusDataOwner: '090c5cfd-751d-490a-894a-3ce6f1109419'
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  azureMLDataScientist: 'f6c7c914-8db3-469d-8ca1-694a8f32e121'
  azureMLComputeOperator: 'e503ece1-11d0-4e8e-8e2c-7a6c3bf38815'
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
  networkContributor: '4d97b98b-1d4f-4787-a291-c67834d212e7'
  reader: 'acdd72a7-3385-48ef-bd42-f606fba81ae7'
  acrPush: '8311e382-0749-4cb8-b61a-304f252e45ec'
}

resource serviceBus 'Microsoft.ServiceBus/namespaces@2024-01-01' existing = {
  name: serviceBusName
}

resource requestsQueue 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' existing = {
  parent: serviceBus
  name: requestsQueueName
}

resource completedTopic 'Microsoft.ServiceBus/namespaces/topics@2024-01-01' existing = {
  parent: serviceBus
  name: completedTopicName
}

resource notifierSubscription 'Microsoft.ServiceBus/namespaces/topics/subscriptions@2024-01-01' existing = {
  parent: completedTopic
  name: notifierSubscriptionName
}

resource registry 'Microsoft.ContainerRegistry/registries@2023-07-01' existing = {
  name: registryName
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageName
}

resource workspace 'Microsoft.MachineLearningServices/workspaces@2024-04-01' existing = {
  name: workspaceName
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

resource vnet 'Microsoft.Network/virtualNetworks@2023-11-01' existing = {
  name: vnetName
}

resource amlSubnet 'Microsoft.Network/virtualNetworks/subnets@2023-11-01' existing = {
  parent: vnet
  name: amlSubnetName
}

resource amlNsg 'Microsoft.Network/networkSecurityGroups@2023-11-01' existing = {
  name: amlNsgName
}

// Service Bus, sending: completions (topic, reply_to queues), deferrals (requests queue),
// rejections. Namespace scope, because a request's reply_to queue can be any queue in it.
resource sbSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(serviceBus.id, principalId, role.serviceBusDataSender)
  scope: serviceBus
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.serviceBusDataSender)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Service Bus, the two triggers: Data Owner on exactly the entities they read. Data Receiver
// would receive, but the Functions scale controller (target-based scaling, Flex Consumption)
// reads the entity's message count with the administration API, which needs the Manage claim:
// without it the count fails and the app does not scale on the backlog
// (Azure/azure-sdk-for-net, Microsoft.Azure.WebJobs.Extensions.ServiceBus,
// Listeners/ServiceBusMetricsProvider.cs; the trigger's roles:
// https://learn.microsoft.com/azure/azure-functions/functions-bindings-service-bus-trigger#identity-based-connections).
// A topic trigger's assignment must cover the subscription, hence the subscription scope.
resource sbRequestsOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(requestsQueue.id, principalId, role.serviceBusDataOwner)
  scope: requestsQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.serviceBusDataOwner)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource sbNotifierOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(notifierSubscription.id, principalId, role.serviceBusDataOwner)
  scope: notifierSubscription
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.serviceBusDataOwner)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Host storage (timer leases, deployment package) and the run table.
resource blobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, principalId, role.storageBlobDataOwner)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.storageBlobDataOwner)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource tableContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, principalId, role.storageTableDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.storageTableDataContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Azure ML: submit, watch and cancel runs in the workspace.
resource dataScientist 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(workspace.id, principalId, role.azureMLDataScientist)
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.azureMLDataScientist)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Creating a cluster is not part of AzureML Data Scientist; creating it in the VNet needs
// subnets/join/action on the subnet (below) and Microsoft.Network/*/read on the VNet (vnetReader)
// (https://learn.microsoft.com/azure/machine-learning/how-to-secure-training-vnet, prerequisites).
resource computeOperator 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (allowClusterCreation) {
  name: guid(workspace.id, principalId, role.azureMLComputeOperator)
  scope: workspace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.azureMLComputeOperator)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

resource subnetJoin 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (allowClusterCreation) {
  name: guid(amlSubnet.id, principalId, role.networkContributor)
  scope: amlSubnet
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.networkContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// The NSG check before each submit reads the aml subnet (vnetReader) and its NSG.
resource nsgReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(amlNsg.id, principalId, role.reader)
  scope: amlNsg
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.reader)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Read on the VNet: the subnet for the NSG check, and the VNet when a cluster is created in it.
resource vnetReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vnet.id, principalId, role.reader)
  scope: vnet
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.reader)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Key Vault references in app settings (webhook signing secrets).
resource secretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, principalId, role.keyVaultSecretsUser)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.keyVaultSecretsUser)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Application Insights with local auth disabled takes telemetry from Entra identities only.
resource metricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, principalId, role.monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.monitoringMetricsPublisher)
    principalId: principalId
    principalType: 'ServicePrincipal'
  }
}

// Container registry (admin user off). The workspace's system-assigned identity gets its access to
// the associated registry from Azure ML itself when the workspace is created ("role assignment
// creation: managed by Microsoft"; a user-assigned identity would need Contributor on the
// registry, which ACR Tasks builds require), and each cluster's system-assigned identity gets
// AcrPull automatically because the registry exists before the clusters (the workspace names
// it). Those are not declared again here: a second assignment of the same role to the same
// principal on the same scope fails the deployment (RoleAssignmentExists). Declared: AcrPush
// (push and pull) for the workspace identity, the data-plane right the image build uses.
// https://learn.microsoft.com/azure/machine-learning/how-to-identity-based-service-authentication
resource workspaceAcrPush 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(registry.id, workspacePrincipalId, role.acrPush)
  scope: registry
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role.acrPush)
    principalId: workspacePrincipalId
    principalType: 'ServicePrincipal'
  }
}
